"""FedZip (Malekijoo et al. 2021, arXiv 2102.01593): top-z sparsification, 1-D k-means quantisation and entropy
coding of a client's update, with the coding really performed rather than only counted as in the release.

The arithmetic follows the released `deploy.py`:
- `applying_prune`: every tensor whose name does not contain "bias" (case-sensitive) keeps its `n - round(z n)`
  entries of largest |.| (numpy's round, half to even; z = 0.5 + 0.3 = 0.8), ties at the threshold kept (|x| >=
  the k-th largest, so a tie can keep more); the rest become 0. A tensor with round(z n) = n (one entry) is all 0.
- `kmean_cluster`, on every tensor: centroids start at linspace(min, max, k) of the sparsified tensor; each of the
  `iterations` Lloyd steps assigns every entry to its nearest centroid (ties to the lower index, as argmin) and then
  moves the centroids. The output replaces each entry by the centroid of the cluster it was assigned to in the last
  step, after that step's move (labels one step behind the centroids, as in the reference). With the quirk,
  clusters 0 and k-1 average only their non-zero members and the others all members; the reference is written for
  k = 3 (one middle cluster): for k = 2 both clusters and for k = 1 the one cluster average non-zero members. A
  cluster whose divisor is 0 (empty, or an outer cluster holding only zeros) keeps its previous centroid. The
  reference differs in three degenerate cases, which we do not copy: an empty middle cluster gets centroid 0 when
  cluster 0 has a non-zero member; an outer cluster without non-zero members on the first step is a NameError; and
  such a cluster's entries take the output mask of an earlier step.
- Sizes (`size_report`): the reference prints, per tensor with unique values counted ascending as c, Huffman bits
  Σ c·[2, 1, 1] (not a prefix code: the true lengths are [2, 2, 1]), position bits Σ c·[1, 1, 0]·27, and the
  `bitsize` difference table. Only defined for 3 unique values there; here the rarest value costs 2 bits and each
  other 1 (Huffman), every value but the most frequent 27 bits an entry (position).

A tensor holding inf or NaN is sent as all NaN (the server sees the update is broken), as QSGD does.

Payload (little-endian; no header, names or checksum: `message` frames it):
    arrays   varint: how many arrays (must equal len(like))
    per array, in `like`'s order:
      n       varint: entries (must equal the shape's)
      m       uint8: distinct values, 0 iff n = 0, else 1..clusters
      table   m float32, strictly increasing and finite, no -0.0 (or a single NaN: a broken array)
      mode    uint8, when n > 0: 0 Huffman, 1 position
      Huffman:  the entries' table indices, canonical-Huffman coded (`huffman.encode(ids, m)`: m code-length
                bytes, then the codewords)
      position: uint8 the implicit index (every entry not listed below), then for each other index in ascending
                order a varint count c_i >= 1 (Σ c_i < n); when Σ c_i > 0: uint8 a (1..48), then the gaps of every
                listed index's ascending positions (first position + 1, then differences; each >= 1), index by
                index, as gap = 2**w + r: the w's Huffman-coded over 0..a-1, then the r's in w bits each
                (`bits.pack_fields`, zero-padded).
`encoding="best"` writes, per array, whichever of the two is shorter (Huffman on a tie).
"""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Integral, Real
from typing import Any, ClassVar, NamedTuple

import numpy as np

from ..protocol.constraints import Interval, Options, check_parameters, parameter_constraints
from . import huffman
from .base import Compressor, CorruptPayload, Shapes
from .bits import bit_length, pack_fields, read_uvarint, unpack_fields, uvarint
from .payload import PayloadReader, as_float32, numel

__all__ = ["ENCODINGS", "FedZip", "lloyd", "sparsify_mask"]

ENCODINGS = ("huffman", "position", "best")
HUFFMAN, POSITION = 0, 1
MAX_CLUSTERS = 255  # distinct values are counted in a byte
MAX_GAP_WIDTH = 47  # gaps below 2**48
ADDRESS_BITS = 27  # the reference's position address width
FEW_BOUNDS = 8  # up to this many cluster bounds, counting the bounds below a value beats a binary search
_NAN = np.array([0x7FC00000], dtype=np.uint32).view(np.float32)  # the quiet NaN a broken array becomes


def sparsify_mask(values: np.ndarray, sparsity: float) -> np.ndarray:
    """Which entries of `values` (flat) `applying_prune` keeps: |x| >= the k-th largest |x|, k = n - round(z n)."""
    magnitude = np.abs(as_float32(values))
    n = magnitude.size
    kept = n - int(np.round(n * sparsity))
    if kept <= 0:
        return np.zeros(n, dtype=bool)
    if kept >= n:
        return np.ones(n, dtype=bool)
    threshold = np.partition(magnitude, n - kept)[n - kept]
    return magnitude >= threshold


def _nearest(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index (uint8) of the nearest centroid of each value, the lowest index on a tie (argmin's rule)."""
    if values.size == 0:
        return np.zeros(0, dtype=np.uint8)
    if np.all(centroids[1:] >= centroids[:-1]):  # always, as 1-D Lloyd keeps the initial order
        unique, first = np.unique(centroids, return_index=True)  # equal centroids: the first wins
        if unique.size == 1:
            return np.zeros(values.size, dtype=np.uint8)
        bounds = (unique[:-1].astype(np.float64) + unique[1:]) / 2  # a value on a bound goes to the lower side
        if bounds.size > FEW_BOUNDS:
            return first.astype(np.uint8)[np.searchsorted(bounds, values, side="left")]
        above = np.zeros(values.size, dtype=np.uint8)  # bounds below each value: searchsorted's "left", 10x faster
        for bound in bounds:
            above += values > bound
        return first.astype(np.uint8)[above]
    best = np.abs(values.astype(np.float64) - float(centroids[0]))
    labels = np.zeros(values.size, dtype=np.uint8)
    for index in range(1, centroids.size):
        distance = np.abs(values.astype(np.float64) - float(centroids[index]))
        closer = distance < best
        labels[closer], best = index, np.where(closer, distance, best)
    return labels


def lloyd(values: np.ndarray, clusters: int = 3, iterations: int = 4,
          quirk: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """`kmean_cluster`'s clustering of `values` (flat): each entry's cluster (uint8) and the centroids (float32).

    Entry i decodes to `centroids[labels[i]]`. The zeros (most of a sparsified tensor) all fall in one cluster, so
    they are counted rather than clustered one by one."""
    x = as_float32(values)
    nonzero = np.flatnonzero(x != 0)  # a comparison first: 8x faster than nonzero() on floats
    members = x[nonzero]
    zeros = x.size - nonzero.size
    low = min(float(members.min()) if members.size else 0.0, 0.0 if zeros else np.inf)
    high = max(float(members.max()) if members.size else 0.0, 0.0 if zeros else -np.inf)
    centroids = np.linspace(low, high, clusters).astype(np.float32) if x.size else np.zeros(clusters, np.float32)
    outer = np.zeros(clusters, dtype=bool)
    if quirk:
        outer[[0, -1]] = True
    zero = np.zeros(1, dtype=np.float32)
    labels, zero_label = _nearest(members, centroids), int(_nearest(zero, centroids)[0])
    for step in range(iterations):
        if step:
            labels, zero_label = _nearest(members, centroids), int(_nearest(zero, centroids)[0])
        nonzero_size = np.bincount(labels, minlength=clusters)
        size = nonzero_size.copy()
        size[zero_label] += zeros
        total = np.bincount(labels, weights=members, minlength=clusters)
        divisor = np.where(outer, nonzero_size, size)
        centroids = np.where(divisor > 0, total / np.maximum(divisor, 1), centroids).astype(np.float32)
    out = np.full(x.size, zero_label, dtype=np.uint8)
    out[nonzero] = labels
    return out, centroids + np.float32(0)  # + 0 turns a -0.0 centroid into 0.0


class _Quantised(NamedTuple):
    """One array after sparsification and quantisation: entry i is `table[ids[i]]`."""

    shape: tuple[int, ...]
    table: np.ndarray  # float32 (m,), strictly increasing (or one NaN)
    ids: np.ndarray  # uint8 (n,)
    counts: np.ndarray  # int64 (m,): entries per table value, all >= 1

    def values(self) -> np.ndarray:
        return self.table[self.ids].reshape(self.shape)


def _difference_bits(positions: np.ndarray) -> int:
    """`bitsize`: the first position, then each gap, at 1 bit below 2 and bit_length bits up to 2**30 (0 above)."""
    numbers = np.diff(positions, prepend=0)  # positions[0], then the gaps
    return int(np.where(numbers < 2, 1, np.where(numbers < 1 << 30, bit_length(numbers), 0)).sum())


class FedZip(Compressor):
    """Top-z sparsification of non-bias tensors, `clusters`-means quantisation of every tensor, and entropy coding
    of the cluster ids (`encoding`: Huffman, position lists, or the smaller per tensor). Deterministic: `rng` is
    unused. `quantise(u)` is what the server decodes, bit for bit."""

    name = "fedzip"
    lossless = False
    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "sparsity": [Interval(Real, 0, 1, closed="both")],
        "clusters": [Interval(Integral, 1, MAX_CLUSTERS)],
        "iterations": [Interval(Integral, 0, None, closed="left")],
        "centroid_quirk": [bool],
        "encoding": [Options(set(ENCODINGS))],
    }

    def __init__(self, sparsity: float = 0.8, clusters: int = 3, iterations: int = 4, centroid_quirk: bool = True,
                 encoding: str = "best") -> None:
        check_parameters(parameter_constraints(type(self)),
                         {"sparsity": sparsity, "clusters": clusters, "iterations": iterations,
                          "centroid_quirk": centroid_quirk, "encoding": encoding})
        self.sparsity = float(sparsity)
        self.clusters = int(clusters)
        self.iterations = int(iterations)
        self.centroid_quirk = bool(centroid_quirk)
        self.encoding = str(encoding)

    # --- arithmetic ---------------------------------------------------------------------------------------------

    def _quantise_array(self, name: str, array: np.ndarray) -> _Quantised:
        shape = tuple(np.shape(array))
        x = as_float32(array)
        if x.size == 0:
            return _Quantised(shape, np.zeros(0, np.float32), np.zeros(0, np.uint8), np.zeros(0, np.int64))
        if not np.isfinite(x).all():
            return _Quantised(shape, _NAN.copy(), np.zeros(x.size, np.uint8), np.array([x.size], np.int64))
        if "bias" not in name:
            x = np.where(sparsify_mask(x, self.sparsity), x, np.float32(0))
        labels, centroids = lloyd(x, self.clusters, self.iterations, self.centroid_quirk)
        sizes = huffman.symbol_counts(labels, self.clusters)
        used = sizes > 0
        table, index = np.unique(centroids[used], return_inverse=True)  # equal centroids share one entry
        lookup = np.zeros(self.clusters, dtype=np.uint8)
        lookup[used] = index
        counts = np.bincount(index, weights=sizes[used], minlength=table.size).astype(np.int64)
        return _Quantised(shape, table.astype(np.float32), lookup[labels], counts)

    def _quantise_all(self, update: Mapping[str, np.ndarray]) -> list[_Quantised]:
        return [self._quantise_array(name, array) for name, array in update.items()]

    def quantise(self, update: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The sparsified and quantised arrays (float32, shapes kept): what the server will decode."""
        return {name: q.values() for name, q in zip(update, self._quantise_all(update), strict=True)}

    def reconstruct(self, update: Mapping[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        return self.quantise(update)  # equal to decode(encode(update)) bit for bit, without the coding

    # --- encoding -----------------------------------------------------------------------------------------------

    @staticmethod
    def _huffman_bytes(q: _Quantised) -> bytes:
        return bytes([HUFFMAN]) + huffman.encode(q.ids, q.table.size)

    @staticmethod
    def _position_bytes(q: _Quantised) -> bytes:
        implicit = int(np.argmax(q.counts))
        others = [index for index in range(q.table.size) if index != implicit]
        parts = [bytes([POSITION, implicit])] + [uvarint(int(q.counts[index])) for index in others]
        listed = np.flatnonzero(q.ids != implicit)
        if listed.size:
            positions = listed[np.argsort(q.ids[listed], kind="stable")]  # by index, then position
            counts = q.counts[others]
            previous = np.empty_like(positions)
            previous[1:] = positions[:-1]
            previous[np.cumsum(counts) - counts] = -1  # each index's positions start afresh
            gaps = positions - previous
            widths = bit_length(gaps) - 1
            rest = gaps.astype(np.uint64) - (np.uint64(1) << widths.astype(np.uint64))
            alphabet = int(widths.max()) + 1
            parts += [bytes([alphabet]), huffman.encode(widths, alphabet), pack_fields(rest, widths)]
        return b"".join(parts)

    def _encode_array(self, q: _Quantised) -> bytes:
        head = uvarint(q.ids.size) + bytes([q.table.size]) + q.table.astype("<f4").tobytes()
        if q.ids.size == 0:
            return head
        if self.encoding == "huffman":
            return head + self._huffman_bytes(q)
        position = self._position_bytes(q)
        if self.encoding == "position":
            return head + position
        # best: Huffman's length is known from the counts alone, so only the shorter is coded (Huffman on a tie)
        huffman_length = 1 + q.table.size + -(-huffman.encoded_bits(q.counts) // 8)
        return head + (self._huffman_bytes(q) if huffman_length <= len(position) else position)

    def encode(self, update: Mapping[str, np.ndarray], rng: np.random.Generator | None = None) -> bytes:
        return uvarint(len(update)) + b"".join(self._encode_array(q) for q in self._quantise_all(update))

    # --- decoding -----------------------------------------------------------------------------------------------

    def _fail(self, name: str, what: str) -> CorruptPayload:
        return CorruptPayload(f"{self.name}: {what} in {name}")

    @staticmethod
    def _rest(reader: PayloadReader) -> np.ndarray:
        return np.frombuffer(reader.view[reader.position:], dtype=np.uint8)

    def _decode_positions(self, reader: PayloadReader, name: str, n: int, m: int) -> np.ndarray:
        implicit = reader.uint(1, f"{name}'s implicit value")
        if implicit >= m:
            raise self._fail(name, f"implicit value {implicit} of {m}")
        others = [index for index in range(m) if index != implicit]
        listed, counts = 0, []
        for _ in others:
            count = read_uvarint(reader, f"{name}'s counts")
            listed += count
            if count < 1 or listed >= n:  # every value is used, the implicit one included
                raise self._fail(name, f"{count} positions of a value among {n} entries")
            counts.append(count)
        counts = np.array(counts, dtype=np.int64)
        ids = np.full(n, implicit, dtype=np.uint8)
        if listed == 0:
            return ids
        alphabet = reader.uint(1, f"{name}'s gap classes")
        if not 1 <= alphabet <= MAX_GAP_WIDTH + 1:
            raise self._fail(name, f"{alphabet} gap classes")
        widths, size = huffman.decode_prefix(self._rest(reader), listed, alphabet)
        reader.take(size, f"{name}'s gap classes")
        rest, size = unpack_fields(self._rest(reader), widths)
        reader.take(size, f"{name}'s gap bits")
        gaps = (np.uint64(1) << widths.astype(np.uint64)) | rest
        if gaps.max() > n:
            raise self._fail(name, f"a gap of {int(gaps.max())} in {n} entries")
        running = np.cumsum(gaps.astype(np.int64))
        ends = np.cumsum(counts)
        base = np.concatenate(([0], running[ends[:-1] - 1]))
        positions = running - np.repeat(base, counts) - 1
        if positions[ends - 1].max() >= n:
            raise self._fail(name, f"a position beyond {n} entries")
        for index, start, end in zip(others, ends - counts, ends, strict=True):
            where = positions[start:end]
            if np.any(ids[where] != implicit):
                raise self._fail(name, "a position listed twice")
            ids[where] = index
        return ids

    def _decode_array(self, reader: PayloadReader, name: str, shape: tuple[int, ...]) -> np.ndarray:
        expected = numel(shape)
        n = read_uvarint(reader, f"{name}'s size")
        if n != expected:
            raise self._fail(name, f"{n} entries for shape {tuple(shape)}")
        m = reader.uint(1, f"{name}'s table size")
        if n == 0:
            if m:
                raise self._fail(name, f"{m} values for an empty array")
            return np.zeros(shape, dtype=np.float32)
        if not 1 <= m <= self.clusters:
            raise self._fail(name, f"{m} values (1..{self.clusters} allowed)")
        table = reader.array("<f4", m, f"{name}'s values").astype(np.float32)
        if not (m == 1 and np.isnan(table[0])):
            if not np.isfinite(table).all() or np.any(np.diff(table) <= 0):
                raise self._fail(name, "a value table that is not finite and strictly increasing")
            if np.any((table == 0) & np.signbit(table)):
                raise self._fail(name, "-0.0 in the value table")
        mode = reader.uint(1, f"{name}'s encoding")
        if mode == HUFFMAN:
            ids, size = huffman.decode_prefix(self._rest(reader), n, m)
            reader.take(size, f"{name}'s Huffman stream")
        elif mode == POSITION:
            ids = self._decode_positions(reader, name, n, m)
        else:
            raise self._fail(name, f"encoding {mode}")
        return table[ids].reshape(shape)

    def decode(self, payload: bytes, like: Shapes) -> dict[str, np.ndarray]:
        reader = PayloadReader(payload, self.name)
        arrays = read_uvarint(reader, "the array count")
        if arrays != len(like):
            raise CorruptPayload(f"{self.name}: {arrays} arrays, {len(like)} expected")
        decoded = {name: self._decode_array(reader, name, tuple(shape)) for name, shape in like.items()}
        reader.finish()
        return decoded

    # --- sizes --------------------------------------------------------------------------------------------------

    def size_report(self, update: Mapping[str, np.ndarray]) -> dict[str, int]:
        """Bits of the update as the reference counts them, beside the true Huffman bits and what `encode` sends.

        raw: 32 n. huffman_reference: ascending counts c, 2 c_0 + Σ c_{i>0} (the reference's [2, 1, 1]).
        huffman_true: Σ c_i · (Huffman length of value i), 1 bit an entry for a single value. position_reference:
        27 bits an entry for every value but the most frequent (Σ c·[1, 1, 0]·27). difference_reference: per
        tensor, `bitsize` of each value's positions, summed over all values but the costliest (for 3 values the
        cheapest pair; the reference prints the 3 pair totals over all tensors, pairs ordered by first appearance
        in each tensor, so its smallest total is >= this). encoded: 8 · len(encode(update)). Centroid tables are
        counted only in `encoded`, as the reference prints but does not add them."""
        quantised = self._quantise_all(update)
        report = dict.fromkeys(("raw", "huffman_reference", "huffman_true", "position_reference",
                                "difference_reference"), 0)
        for q in quantised:
            report["raw"] += 32 * q.ids.size
            if q.ids.size == 0:
                continue
            ascending = np.sort(q.counts)
            report["huffman_reference"] += int(2 * ascending[0] + ascending[1:].sum())
            report["huffman_true"] += huffman.encoded_bits(q.counts)
            report["position_reference"] += ADDRESS_BITS * int(q.ids.size - ascending[-1])
            costs = [_difference_bits(np.flatnonzero(q.ids == index)) for index in range(q.table.size)]
            report["difference_reference"] += sum(costs) - max(costs)
        report["encoded"] = 8 * (len(uvarint(len(quantised))) + sum(len(self._encode_array(q)) for q in quantised))
        return report
