"""Narrower floats: an update cast to IEEE half or bfloat16 halves its bytes with a small relative error, and the
raw float32 codec is the lossless reference the message framing is tested with.

The three payloads have no header: the values of every array, in `like`'s order, each entry 4 (identity) or 2
(fp16, bf16) little-endian bytes, so a payload is exactly `width * Σ numel` bytes and its length is all a decoder
has to check.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .base import Compressor, CorruptPayload, Shapes
from .payload import PayloadReader, as_float32, numel

__all__ = ["BFloat16", "Float16", "Identity"]


class _Elementwise(Compressor):
    """A codec that writes every entry in `dtype`; subclasses say how float32 maps to it and back."""

    dtype: str = "<f4"

    def _narrow(self, values: np.ndarray) -> np.ndarray:
        return values

    def _widen(self, stored: np.ndarray) -> np.ndarray:
        return stored.astype(np.float32)

    def encode(self, update: Mapping[str, np.ndarray], rng: np.random.Generator) -> bytes:
        return b"".join(self._narrow(as_float32(array)).astype(self.dtype, copy=False).tobytes()
                        for array in update.values())

    def decode(self, payload: bytes, like: Shapes) -> dict[str, np.ndarray]:
        reader = PayloadReader(payload, self.name)
        sizes = {name: numel(shape) for name, shape in like.items()}
        width = np.dtype(self.dtype).itemsize
        if reader.remaining != width * sum(sizes.values()):  # before allocating anything
            raise CorruptPayload(f"{self.name}: {reader.remaining} bytes for {sum(sizes.values())} entries of "
                                 f"{width} bytes")
        return {name: self._widen(reader.array(self.dtype, sizes[name], name)).reshape(shape)
                for name, shape in like.items()}


class Identity(_Elementwise):
    """The raw float32 bytes: 4 bytes an entry, lossless (NaN payloads and signed zeros included)."""

    name = "identity"
    lossless = True

    def _widen(self, stored: np.ndarray) -> np.ndarray:
        return stored.copy()  # writable, and no longer tied to the payload


class Float16(_Elementwise):
    """IEEE binary16 (numpy's cast: round to nearest, ties to even, subnormals kept): 2 bytes an entry.

    Magnitudes from 65520 up (half's largest finite value is 65504) become ±inf, and a NaN stays a NaN (its
    payload is numpy's, not necessarily torch's quiet NaN). The decoder widens exactly back to float32.
    """

    name = "fp16"
    dtype = "<f2"

    def _narrow(self, values: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):  # overflow to ±inf is the documented behaviour, not a warning
            return values.astype(np.float16)


class BFloat16(_Elementwise):
    """bfloat16, the upper 16 bits of float32 rounded to nearest, ties to even: 2 bytes an entry.

    The rounding is integer arithmetic on the float32 bits (add 0x7FFF plus the lowest kept bit, drop the low 16),
    so it matches torch's `.to(torch.bfloat16)` bit for bit on every non-NaN value, overflowing to ±inf as IEEE
    rounding does. A NaN keeps its sign and upper payload bits with the quiet bit set, so it stays a NaN (torch
    writes a canonical NaN whose bits depend on its CPU kernel). Decoding shifts the 16 bits back: exact.
    """

    name = "bf16"
    dtype = "<u2"

    def _narrow(self, values: np.ndarray) -> np.ndarray:
        bits = values.view(np.uint32)
        lowest_kept = (bits >> np.uint32(16)) & np.uint32(1)
        rounded = (bits + (np.uint32(0x7FFF) + lowest_kept)) >> np.uint32(16)  # no wrap: NaNs are replaced below
        quiet_nan = (bits >> np.uint32(16)) | np.uint32(0x0040)
        return np.where(np.isnan(values), quiet_nan, rounded).astype(np.uint16)

    def _widen(self, stored: np.ndarray) -> np.ndarray:
        return (stored.astype(np.uint32) << np.uint32(16)).view(np.float32)
