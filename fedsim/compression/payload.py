"""Reading an untrusted payload: a bounds-checked cursor every codec of this package decodes with, and the two
array helpers they share. A read past the end is a `CorruptPayload`, never an IndexError or a numpy error.
"""

from __future__ import annotations

import math

import numpy as np

from .base import CorruptPayload

__all__ = ["PayloadReader", "as_float32", "numel"]


def numel(shape: tuple[int, ...]) -> int:
    """Entries of an array of `shape`."""
    return math.prod(int(size) for size in shape)


def as_float32(array: np.ndarray) -> np.ndarray:
    """`array` as a flat, contiguous float32 array (a view when it already is one)."""
    return np.ascontiguousarray(array, dtype=np.float32).reshape(-1)


class PayloadReader:
    """Reads a payload front to back; every read checks it stays inside the payload, raising `CorruptPayload`."""

    def __init__(self, payload: bytes, codec: str) -> None:
        try:
            self.view = memoryview(payload).cast("B")
        except TypeError as error:
            raise CorruptPayload(f"{codec}: the payload is not bytes ({type(payload).__name__})") from error
        self.codec = codec
        self.position = 0

    @property
    def remaining(self) -> int:
        return len(self.view) - self.position

    def take(self, size: int, what: str) -> memoryview:
        """The next `size` bytes."""
        if size < 0 or size > self.remaining:
            raise CorruptPayload(f"{self.codec}: the payload ends inside {what} ({size} bytes needed at offset "
                                 f"{self.position}, {self.remaining} left)")
        chunk = self.view[self.position:self.position + size]
        self.position += size
        return chunk

    def array(self, dtype: str, count: int, what: str) -> np.ndarray:
        """The next `count` entries of little-endian `dtype` (read-only, no copy)."""
        kind = np.dtype(dtype)
        return np.frombuffer(self.take(count * kind.itemsize, what), dtype=kind, count=count)

    def uint(self, size: int, what: str) -> int:
        """The next `size`-byte little-endian unsigned integer."""
        return int.from_bytes(self.take(size, what), "little")

    def finish(self) -> None:
        """Raise when bytes are left after the last array."""
        if self.remaining:
            raise CorruptPayload(f"{self.codec}: {self.remaining} bytes after the last array")
