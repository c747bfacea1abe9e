"""Sparsification: send a few entries of each array and zeros for the rest.

Top-k keeps the entries of largest magnitude, which with error feedback converges like the full update (Stich et
al. 2018, "Sparsified SGD with memory"); random-k keeps a uniform random subset, whose indices cost nothing since
the server regenerates them from an 8-byte seed. Both keep `kept_count(ratio, n)` entries of an n-entry array and
send the kept float32 values unchanged, so decoding gives the masked update bit for bit (random-k's unbiased
variant scales the kept values by n/k before sending them).

Top-k payload, per array in `like`'s order (little-endian):
    k        uint32
    mode     uint8: 0 the indices as fixed-width integers (uint16 when n <= 65536, else uint32),
                    1 their gaps as LEB128 varints (the first index, then each index minus its predecessor minus 1)
    indices  ascending, `min(k * width, varint bytes)` bytes: the cheaper form, fixed width on a tie
    values   k float32
so an array costs 5 + index bytes + 4k bytes (5 bytes when empty); the decoder takes any k <= n, in either mode,
with strictly ascending indices below n (varints in their shortest form).

Random-k payload: the seed (uint64), then every array's k float32 values at its ascending indices, 8 + 4 Σk bytes.
The indices of each array are `sort(g.choice(n, k, replace=False, shuffle=False))` for one
`numpy.random.default_rng(seed)` `g` drawn from in `like`'s order, skipping empty arrays (numpy's Generator stream:
the client and the server need numpy versions that agree on it).
"""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Real
from typing import Any, ClassVar

import numpy as np

from ..protocol.constraints import Interval, check_parameters, parameter_constraints
from .base import Compressor, CorruptPayload, Shapes
from .bits import read_uvarints, uvarints
from .payload import PayloadReader, as_float32, numel

__all__ = ["RandomK", "TopK", "kept_count", "top_indices"]

FIXED, VARINT = 0, 1
MAX_GAP_BYTES = 5  # 7 bits a byte: enough for any uint32


def kept_count(ratio: float, n: int) -> int:
    """Entries kept of an n-entry array: `ratio * n` rounded, at least one of a non-empty array, at most n."""
    return min(n, max(1, round(ratio * n))) if n else 0


def top_indices(values: np.ndarray, k: int) -> np.ndarray:
    """Ascending indices of the k entries of largest |value|, ties going to the lower index.

    Magnitudes are compared as the float32 bits without the sign, an order that matches |value|'s and puts NaNs
    above inf, so the choice is total and deterministic."""
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    key = values.view(np.uint32) & np.uint32(0x7FFFFFFF)
    if k == key.size:
        return np.arange(key.size, dtype=np.int64)
    threshold = np.partition(key, key.size - k)[key.size - k]  # the k-th largest magnitude
    above = np.flatnonzero(key > threshold)
    tied = np.flatnonzero(key == threshold)[: k - above.size]  # the lowest indices among the ties
    return np.union1d(above, tied)


def _fixed_width(n: int) -> int:
    return 2 if n <= 1 << 16 else 4


class _Sparsifier(Compressor):
    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {"ratio": [Interval(Real, 0, 1, closed="right")]}

    def __init__(self, ratio: float = 0.01) -> None:
        check_parameters(parameter_constraints(type(self)), {"ratio": ratio})
        self.ratio = float(ratio)


class TopK(_Sparsifier):
    """Keeps each array's `ratio` share of entries of largest magnitude (at least one), the rest zero."""

    name = "topk"

    def encode(self, update: Mapping[str, np.ndarray], rng: np.random.Generator) -> bytes:
        parts = []
        for array in update.values():
            values = as_float32(array)
            n = values.size
            indices = top_indices(values, kept_count(self.ratio, n))
            k = indices.size
            gaps = np.diff(indices, prepend=-1) - 1
            varints = uvarints(gaps)
            mode = VARINT if len(varints) < k * _fixed_width(n) else FIXED
            parts.append(k.to_bytes(4, "little") + bytes([mode]))
            parts.append(varints if mode == VARINT else indices.astype(f"<u{_fixed_width(n)}").tobytes())
            parts.append(values[indices].astype("<f4").tobytes())
        return b"".join(parts)

    def decode(self, payload: bytes, like: Shapes) -> dict[str, np.ndarray]:
        reader = PayloadReader(payload, self.name)
        decoded = {}
        for name, shape in like.items():
            n = numel(shape)
            k = reader.uint(4, f"{name}'s count")
            if k > n:
                raise CorruptPayload(f"{self.name}: {k} entries kept of {name}'s {n}")
            mode = reader.uint(1, f"{name}'s index mode")
            if mode == VARINT:
                gaps = read_uvarints(reader, k, f"{name}'s indices", MAX_GAP_BYTES).astype(np.int64)
                if k and gaps.max() >= n:  # also keeps the running sum below n * n
                    raise CorruptPayload(f"{self.name}: an index gap of {gaps.max()} in {name}'s {n} entries")
                indices = np.cumsum(gaps + 1) - 1
            elif mode == FIXED:
                indices = reader.array(f"<u{_fixed_width(n)}", k, f"{name}'s indices").astype(np.int64)
                if k > 1 and not np.all(np.diff(indices) > 0):
                    raise CorruptPayload(f"{self.name}: {name}'s indices are not strictly ascending")
            else:
                raise CorruptPayload(f"{self.name}: unknown index mode {mode} for {name}")
            if k and indices[-1] >= n:
                raise CorruptPayload(f"{self.name}: index {indices[-1]} out of {name}'s {n} entries")
            values = reader.array("<f4", k, f"{name}'s values")
            out = np.zeros(n, dtype=np.float32)
            out[indices] = values
            decoded[name] = out.reshape(shape)
        reader.finish()
        return decoded


class RandomK(_Sparsifier):
    """Keeps each array's `ratio` share of entries at uniformly random positions (at least one), the rest zero.

    `unbiased` scales the kept values by n/k (one float32 product), so the decoded update's expectation is the
    update (Wangni et al. 2018; Konečný et al. 2016); unscaled, it is the variant used with error feedback (Stich
    et al. 2018)."""

    name = "randk"
    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {"unbiased": [bool]}

    def __init__(self, ratio: float = 0.01, unbiased: bool = False) -> None:
        super().__init__(ratio)
        check_parameters(parameter_constraints(type(self)), {"unbiased": unbiased})
        self.unbiased = unbiased

    def _indices(self, generator: np.random.Generator, n: int) -> np.ndarray:
        k = kept_count(self.ratio, n)
        if k == 0:
            return np.zeros(0, dtype=np.int64)
        return np.sort(generator.choice(n, k, replace=False, shuffle=False))

    def encode(self, update: Mapping[str, np.ndarray], rng: np.random.Generator) -> bytes:
        seed = int(rng.integers(0, 1 << 64, dtype=np.uint64))
        generator = np.random.default_rng(seed)
        parts = [seed.to_bytes(8, "little")]
        for array in update.values():
            values = as_float32(array)
            indices = self._indices(generator, values.size)
            kept = values[indices]
            if self.unbiased and indices.size:
                kept = kept * np.float32(values.size / indices.size)
            parts.append(kept.astype("<f4").tobytes())
        return b"".join(parts)

    def decode(self, payload: bytes, like: Shapes) -> dict[str, np.ndarray]:
        reader = PayloadReader(payload, self.name)
        seed = reader.uint(8, "the seed")
        counts = {name: kept_count(self.ratio, numel(shape)) for name, shape in like.items()}
        if reader.remaining != 4 * sum(counts.values()):  # before drawing or allocating anything
            raise CorruptPayload(f"{self.name}: {reader.remaining} bytes of values for {sum(counts.values())} "
                                 f"kept entries (ratio {self.ratio:g})")
        generator = np.random.default_rng(seed)
        decoded = {}
        for name, shape in like.items():
            out = np.zeros(numel(shape), dtype=np.float32)
            out[self._indices(generator, out.size)] = reader.array("<f4", counts[name], f"{name}'s values")
            decoded[name] = out.reshape(shape)
        return decoded
