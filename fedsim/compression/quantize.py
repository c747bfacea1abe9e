"""QSGD (Alistarh et al. 2017): each entry becomes a sign and one of s+1 levels of its bucket's L2 norm, rounded
stochastically so that the decoded update is an unbiased estimate of the update, at about log2(s+1) + 1 bits an
entry instead of 32.

An entry x of a bucket with norm ‖v‖ gets the level l = floor(s |x| / ‖v‖ + u), u ~ U[0, 1) from the encoder's
`rng`, and decodes to ‖v‖ sign(x) l / s; E[l] = s |x| / ‖v‖, so E[decoded] = x, and the paper's Lemma 3.1 bounds
E‖Q(v) − v‖² by min(n/s², √n/s) ‖v‖² for a bucket of n entries. The norm sent is the float32 at or above the
exact norm, and the levels are computed against that very value, so rounding the norm to float32 adds no bias.

Payload, per array in `like`'s order (little-endian, no header):
    norms   one float32 per bucket: ceil(n / bucket_size) buckets, or one when bucket_size is 0 (none if n is 0)
    levels  n levels of b = ceil(log2(s + 1)) bits each, packed least significant bit first: ceil(n b / 8) bytes
    signs   one bit per entry whose level is not 0 (1: negative), in entry order: ceil(nnz / 8) bytes
(both bit blocks zero-padded to a whole byte, which the decoder checks), so an array costs
4 · buckets + ceil(n b / 8) + ceil(nnz / 8) bytes. A bucket whose norm is not finite (an update holding inf or NaN,
or one whose norm exceeds float32's range) is sent as a NaN norm with all levels 0, and
decodes to NaN entries: the server sees that the update is broken.
"""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Integral
from typing import Any, ClassVar

import numpy as np

from ..protocol.constraints import Interval, check_parameters, parameter_constraints
from .base import Compressor, CorruptPayload, Shapes
from .bits import check_uniform_padding, pack_uniform, unpack_uniform
from .payload import PayloadReader, as_float32, numel

__all__ = ["QSGD"]

MAX_LEVELS = (1 << 16) - 1  # levels fit uint16


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class QSGD(Compressor):
    """Stochastic quantisation to `levels` (s) levels of each bucket's L2 norm, plus a sign; unbiased.

    `bucket_size` 0 gives one norm per array; otherwise each run of `bucket_size` entries has its own norm, as in
    the paper's experiments (a smaller bucket: more norms to send, less variance)."""

    name = "qsgd"
    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "levels": [Interval(Integral, 1, MAX_LEVELS)],
        "bucket_size": [Interval(Integral, 0, None, closed="left")],
    }

    def __init__(self, levels: int = 16, bucket_size: int = 0) -> None:
        check_parameters(parameter_constraints(type(self)), {"levels": levels, "bucket_size": bucket_size})
        self.levels = int(levels)
        self.bucket_size = int(bucket_size)

    @property
    def width(self) -> int:
        """Bits a level takes: ceil(log2(s + 1))."""
        return self.levels.bit_length()

    def _buckets(self, n: int) -> int:
        if n == 0:
            return 0
        return 1 if self.bucket_size == 0 else _ceil_div(n, self.bucket_size)

    def _per_entry(self, per_bucket: np.ndarray, n: int) -> np.ndarray:
        """A per-bucket array spread over the n entries (a broadcastable scalar when there is one bucket)."""
        if per_bucket.size <= 1:
            return per_bucket
        return np.repeat(per_bucket, self.bucket_size)[:n]

    def _norms(self, squares: np.ndarray) -> np.ndarray:
        """Each bucket's L2 norm as the float32 at or above it (NaN where it is not finite in float32)."""
        n, buckets = squares.size, self._buckets(squares.size)
        if buckets > 1:
            padded = np.zeros(buckets * self.bucket_size)
            padded[:n] = squares
            exact = np.sqrt(padded.reshape(buckets, self.bucket_size).sum(axis=1))
        else:
            exact = np.sqrt(squares.sum(keepdims=True))[:buckets]
        norms = exact.astype(np.float32)
        below = norms.astype(np.float64) < exact
        norms[below] = np.nextafter(norms[below], np.float32(np.inf))
        norms[~np.isfinite(norms)] = np.nan
        return norms

    def encode(self, update: Mapping[str, np.ndarray], rng: np.random.Generator) -> bytes:
        parts = []
        with np.errstate(over="ignore", invalid="ignore"):  # non-finite updates are handled, not warned about
            for array in update.values():
                values = as_float32(array)
                magnitudes = np.abs(values.astype(np.float64))
                norms = self._norms(np.square(magnitudes))
                scale = np.zeros(norms.size)  # s / norm; 0 for an all-zero or broken bucket
                usable = norms > 0  # False for NaN
                scale[usable] = self.levels / norms[usable].astype(np.float64)
                ratio = magnitudes * self._per_entry(scale, values.size)  # s |x| / norm, in [0, s]
                ratio[np.isnan(ratio)] = 0.0  # inf times 0: an inf entry of a broken bucket
                levels = np.minimum(np.floor(ratio + rng.random(values.size)), self.levels).astype(np.uint16)
                parts += [norms.astype("<f4").tobytes(), pack_uniform(levels, self.width),
                          np.packbits(np.signbit(values[levels > 0]), bitorder="little").tobytes()]
        return b"".join(parts)

    def decode(self, payload: bytes, like: Shapes) -> dict[str, np.ndarray]:
        reader = PayloadReader(payload, self.name)
        decoded = {}
        for name, shape in like.items():
            n = numel(shape)
            buckets = self._buckets(n)
            norms = reader.array("<f4", buckets, f"{name}'s norms")
            if np.any(norms < 0):
                raise CorruptPayload(f"{self.name}: a negative norm in {name}")
            packed = reader.array("u1", _ceil_div(n * self.width, 8), f"{name}'s levels")
            check_uniform_padding(packed, n * self.width, f"{self.name}: {name}'s levels")
            levels = unpack_uniform(packed, n, self.width)
            if n and levels.max() > self.levels:
                raise CorruptPayload(f"{self.name}: level {levels.max()} above {self.levels} in {name}")
            nonzero = levels > 0
            count = int(np.count_nonzero(nonzero))
            packed = reader.array("u1", _ceil_div(count, 8), f"{name}'s signs")
            check_uniform_padding(packed, count, f"{self.name}: {name}'s signs")
            signs = np.unpackbits(packed, count=count, bitorder="little").astype(bool)
            steps = self._per_entry(norms.astype(np.float64) / self.levels, n)
            with np.errstate(over="ignore", invalid="ignore"):  # a NaN or huge norm decodes to NaN or inf
                out = (steps * levels).astype(np.float32)
            negative = np.zeros(n, dtype=bool)
            negative[nonzero] = signs
            np.negative(out, out=out, where=negative)
            decoded[name] = out.reshape(shape)
        reader.finish()
        return decoded
