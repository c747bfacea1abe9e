"""FedZip: the reference's arithmetic on hand-computed cases, real Huffman and position coding, exact round trips,
the reference's size accounting, and a decoder that rejects every malformed payload with CorruptPayload only."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.compression import huffman
from fedsim.compression.base import CorruptPayload
from fedsim.compression.bits import (
    bit_length,
    pack_fields,
    pack_uniform,
    read_uvarint,
    read_uvarints,
    unpack_fields,
    unpack_uniform,
    uvarint,
    uvarints,
)
from fedsim.compression.fedzip import FedZip, _nearest, lloyd, sparsify_mask
from fedsim.compression.payload import PayloadReader
from fedsim.protocol.constraints import InvalidParameter

f32 = np.float32


def _array(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def _shapes(update) -> dict[str, tuple[int, ...]]:
    return {name: np.shape(array) for name, array in update.items()}


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def _degenerate_update(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "conv/kernel": rng.normal(size=(3, 3, 2, 4)).astype(np.float32),
        "conv/bias": rng.normal(size=4).astype(np.float32),
        "dense/kernel": rng.standard_t(3, size=(50, 7)).astype(np.float32),
        "zeros": np.zeros(40, np.float32),
        "single": _array([2.5]),
        "single_bias": _array([-2.5]),
        "constant_bias": np.full((2, 3), 3.25, np.float32),
        "two_values_bias": _array([1, 1, 2, 2, 1]),
        "tiny": _array([0.5, -0.5]),
        "scalar": _array(1.5).reshape(()),
        "empty": np.zeros((0, 3), np.float32),
        "ones": np.ones(17, np.float32),
    }


# --- sparsification --------------------------------------------------------------------------------------------


def test_top_20_percent_mask_keeps_ties_at_the_threshold():
    x = _array([3, -5, 1, -3, 2, 0.5, 3, -1, 0, 2])  # n - round(8) = 2 kept: |x| >= 3, the 2nd largest
    assert sparsify_mask(x, 0.8).tolist() == [True, True, False, True, False, False, True, False, False, False]
    assert sparsify_mask(_array([1, -4, 2, 3, 0]), 0.8).tolist() == [False, True, False, False, False]


def test_kept_count_rounds_half_to_even_and_one_entry_is_pruned():
    assert sparsify_mask(_array([5, 4, 3, 2, 1]), 0.5).tolist() == [True, True, True, False, False]  # round(2.5) = 2
    assert sparsify_mask(_array([7.0]), 0.8).tolist() == [False]  # round(0.8) = 1: nothing kept
    assert sparsify_mask(_array([1, 2]), 0.0).all()


@pytest.mark.parametrize("clusters", [2, 3, 9, 20])  # up to 8 bounds counted, more searched: the same labels
def test_nearest_centroid_is_the_brute_force_argmin_with_ties_to_the_lower_side(clusters):
    rng = np.random.default_rng(clusters)
    centroids = np.sort(rng.normal(size=clusters)).astype(np.float32)
    centroids[1] = centroids[0]  # equal centroids: the first wins
    midpoints = ((centroids[:-1].astype(np.float64) + centroids[1:]) / 2).astype(np.float32)
    values = np.concatenate([rng.normal(size=5000).astype(np.float32), midpoints, centroids])
    distance = np.abs(values.astype(np.float64)[:, None] - centroids.astype(np.float64)[None, :])
    assert np.array_equal(_nearest(values, centroids), np.argmin(distance, axis=1))
    assert _nearest(_array([0.5, 2.0, 2.5]), _array([0, 1, 3])).tolist() == [0, 1, 2]  # on a bound: the lower


def test_bias_tensors_are_not_sparsified_but_are_quantised():
    values = _array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    out = FedZip(clusters=10).quantise({"dense/kernel": values, "dense/bias": values})
    assert out["dense/kernel"].tolist() == [0] * 8 + [9, 10]
    assert out["dense/bias"].tolist() == values.tolist()  # 10 clusters on 10 values: exact
    three = FedZip().quantise({"dense/bias": values})["dense/bias"]
    assert np.unique(three).size == 3


# --- k-means ---------------------------------------------------------------------------------------------------


def test_lloyd_outer_centroids_ignore_zeros_with_the_quirk():
    # linspace(0, 10, 3) = [0, 5, 10]; bounds 2.5, 7.5: {0, 0, 0, 1, 2} | {} | {9, 10}
    x = _array([0, 0, 0, 1, 2, 9, 10])
    labels, centroids = lloyd(x, 3, 4, quirk=True)
    assert labels.tolist() == [0, 0, 0, 0, 0, 2, 2]
    assert centroids.tolist() == [1.5, 5.0, 9.5]  # (1 + 2) / 2 non-zero members; the empty middle keeps 5
    labels, centroids = lloyd(x, 3, 4, quirk=False)
    assert labels.tolist() == [0, 0, 0, 0, 0, 2, 2]
    assert centroids.tolist() == [f32(0.6), 5.0, 9.5]  # 3 / 5 over all members


def test_lloyd_middle_centroid_averages_all_members_with_the_quirk():
    # [-4, 1, 6]; bounds -1.5, 3.5: {-4, -2} | {0, 0, 1, 3} | {6}; the middle divides by 4, zeros included
    labels, centroids = lloyd(_array([-4, -2, 0, 0, 1, 3, 6]), 3, 4, quirk=True)
    assert labels.tolist() == [0, 0, 1, 1, 1, 1, 2]
    assert centroids.tolist() == [-3.0, 1.0, 6.0]


def test_lloyd_labels_lag_the_last_centroid_update():
    x = _array([0, 12, 13, 50])
    # step 1: [0, 25, 50] -> {0, 12} | {13} | {50} -> [6, 13, 50]; step 2: bounds 9.5, 31.5 -> {0} | {12, 13} | {50}
    labels, centroids = lloyd(x, 3, 1, quirk=False)
    assert (labels.tolist(), centroids.tolist()) == ([0, 0, 1, 2], [6.0, 13.0, 50.0])
    labels, centroids = lloyd(x, 3, 2, quirk=False)
    assert (labels.tolist(), centroids.tolist()) == ([0, 1, 1, 2], [0.0, 12.5, 50.0])
    labels, centroids = lloyd(x, 3, 2, quirk=True)  # cluster 0 = {0, 12} averages 12 alone: stays put
    assert (labels.tolist(), centroids.tolist()) == ([0, 0, 1, 2], [12.0, 13.0, 50.0])
    labels, centroids = lloyd(x, 3, 0, quirk=True)  # no step: the nearest initial centroid
    assert (labels.tolist(), centroids.tolist()) == ([0, 0, 1, 2], [0.0, 25.0, 50.0])


@pytest.mark.parametrize("quirk", [True, False])
@pytest.mark.parametrize("values", [[0, 0, 0], [7, 7, 7], [3.0], [1, 1, 2], [0, 0, -1], [-2, 5]])
def test_lloyd_degenerate_inputs_give_finite_centroids(values, quirk):
    for clusters in (1, 2, 3, 5):
        labels, centroids = lloyd(_array(values), clusters, 4, quirk)
        assert np.isfinite(centroids).all() and labels.max() < clusters
        assert np.unique(centroids[labels]).size <= len(set(values))


def test_equal_centroids_take_the_lowest_index():
    labels, centroids = lloyd(_array([7, 7, 7]), 3, 4, quirk=True)  # linspace(7, 7, 3): all equal
    assert labels.tolist() == [0, 0, 0] and centroids.tolist() == [7.0, 7.0, 7.0]


# --- Huffman and bit fields ------------------------------------------------------------------------------------


def test_huffman_code_lengths():
    assert huffman.code_lengths([5, 3, 1]).tolist() == [1, 2, 2]
    assert huffman.code_lengths([1, 2, 5]).tolist() == [2, 2, 1]
    assert huffman.code_lengths([0, 7, 0]).tolist() == [0, 1, 0]
    assert huffman.code_lengths([1, 1, 2, 4]).tolist() == [3, 3, 2, 1]
    assert huffman.code_lengths([1, 1, 1, 1]).tolist() == [2, 2, 2, 2]
    assert huffman.code_lengths([0, 0]).tolist() == [0, 0]
    assert huffman.encoded_bits([5, 2, 1]) == 5 + 4 + 2


def test_huffman_canonical_bytes():
    # lengths [1, 2, 2]: codewords 0, 10, 11; 0|10|11|0 + 2 padding bits = 0b01011000
    assert huffman.encode(np.array([0, 1, 2, 0]), 3) == bytes([1, 2, 2, 0x58])
    assert huffman.encode(np.array([1, 1, 1]), 2) == bytes([0, 1, 0])  # a single symbol: code "0"
    assert huffman.encode(np.zeros(0, int), 2) == bytes([0, 0])


def test_huffman_round_trip_many_alphabets():
    rng = np.random.default_rng(3)
    for k in (1, 2, 3, 5, 17, 48, 256):
        for n in (0, 1, 2, 7, 8, 9, 100, 5000):
            symbols = rng.choice(k, size=n, p=rng.dirichlet(np.full(k, 0.3)))
            data = huffman.encode(symbols, k)
            assert len(data) == k + -(-huffman.encoded_bits(np.bincount(symbols, minlength=k)) // 8)
            assert np.array_equal(huffman.decode(data, n, k), symbols)


@pytest.mark.parametrize(("data", "count", "k"), [
    (bytes([1, 2, 2, 0x58]), 7, 3),  # truncated: 0|10|11|0|0|0 holds at most 6 symbols
    (bytes([1, 2, 2]), 1, 3),  # no stream at all
    (bytes([1, 2]), 1, 3),  # inside the lengths
    (bytes([1, 1, 1, 0x58]), 4, 3),  # Kraft sum 3/2
    (bytes([1, 2, 0, 0x58]), 2, 3),  # Kraft sum 3/4: incomplete
    (bytes([0, 2, 0, 0x00]), 2, 3),  # a single symbol with length 2
    (bytes([0, 1, 0, 0x01]), 3, 3),  # a single symbol's stream holds a 1
    (bytes([1, 2, 2, 0x59]), 4, 3),  # non-zero padding
    (bytes([1, 2, 2, 0x58, 0x00]), 4, 3),  # a trailing byte
    (bytes([1, 2, 2]), 0, 3),  # lengths for nothing
    (bytes([0, 0, 0]), 2, 3),  # no lengths for something
])
def test_huffman_rejects_inconsistent_streams(data, count, k):
    with pytest.raises(CorruptPayload):
        huffman.decode(data, count, k)


def test_bit_fields_and_varints():
    assert bit_length(np.array([0, 1, 2, 3, 4, 255, 256, 2**40])).tolist() == [0, 1, 2, 2, 3, 8, 9, 41]
    assert pack_fields(np.array([5, 0, 1]), np.array([3, 0, 2])) == bytes([0b10101000])
    rng = np.random.default_rng(4)
    widths = rng.integers(0, 57, 3000)
    values = rng.integers(0, 2**63, 3000, dtype=np.uint64) >> (64 - widths).astype(np.uint64)
    values[widths == 0] = 0
    data = pack_fields(values, widths)
    decoded, size = unpack_fields(np.frombuffer(data + b"\xff", np.uint8), widths)
    assert size == len(data) == -(-int(widths.sum()) // 8) and np.array_equal(decoded, values)
    with pytest.raises(CorruptPayload):
        unpack_fields(np.frombuffer(data[:-1], np.uint8), widths)
    with pytest.raises(CorruptPayload):  # padding bits set
        unpack_fields(np.array([0b10101001], np.uint8), np.array([3, 0, 2]))
    for value in (0, 1, 127, 128, 300, 2**63, 2**64 - 1):
        assert read_uvarint(PayloadReader(uvarint(value), "t"), "v") == value
    for bad in (b"\x80", b"\x80\x00", b"\xff" * 11):
        with pytest.raises(CorruptPayload):
            read_uvarint(PayloadReader(bad, "t"), "v")
    with pytest.raises(CorruptPayload, match="above 64 bits"):  # 2**64 in ten bytes
        read_uvarint(PayloadReader(b"\x80" * 9 + b"\x02", "t"), "v")


def test_varint_arrays_are_the_single_varints_back_to_back():
    numbers = np.array([0, 1, 127, 128, 300, 2**32, 2**63, 2**64 - 1], dtype=np.uint64)
    data = uvarints(numbers)
    assert data == b"".join(uvarint(int(v)) for v in numbers)
    assert [len(uvarint(int(v))) for v in numbers] == [1, 1, 1, 2, 2, 5, 10, 10]
    reader = PayloadReader(data + b"\x05", "t")
    assert np.array_equal(read_uvarints(reader, numbers.size, "v"), numbers) and reader.remaining == 1
    with pytest.raises(CorruptPayload, match="longer than 5 bytes"):  # top-k's gaps are at most 5 bytes
        read_uvarints(PayloadReader(uvarints(numbers[:7]), "t"), 7, "v", max_bytes=5)
    with pytest.raises(CorruptPayload, match="ends inside"):
        read_uvarints(PayloadReader(data[:-1], "t"), numbers.size, "v")
    with pytest.raises(ValueError):
        uvarints(np.array([3, -1]))


def test_uniform_bit_fields_are_least_significant_bit_first():
    assert pack_uniform(np.array([1, 2, 3]), 3) == bytes([0b11010001, 0])  # 001, 010, 011 read from bit 0 up
    values = np.random.default_rng(1).integers(0, 2**13, 1001)
    packed = np.frombuffer(pack_uniform(values, 13), np.uint8)
    assert packed.size == -(-1001 * 13 // 8) and np.array_equal(unpack_uniform(packed, 1001, 13), values)


# --- FedZip round trips and sizes ------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["huffman", "position", "best"])
@pytest.mark.parametrize(("clusters", "quirk"), [(3, True), (3, False), (1, True), (2, True), (5, False)])
def test_round_trip_is_exact(encoding, clusters, quirk):
    codec = FedZip(clusters=clusters, centroid_quirk=quirk, encoding=encoding)
    rng = np.random.default_rng(clusters)
    update = _degenerate_update(rng)
    payload = codec.encode(update, rng)
    decoded = codec.decode(payload, _shapes(update))
    expected = codec.quantise(update)
    assert list(decoded) == list(update)
    for name in update:
        assert _same_bits(decoded[name], expected[name]), name
        assert np.isfinite(decoded[name]).all()
        assert np.unique(decoded[name]).size <= clusters
    reconstructed = codec.reconstruct(update, rng)
    assert all(_same_bits(reconstructed[name], decoded[name]) for name in update)
    assert not decoded["zeros"].any() and not decoded["single"].any()  # one entry: round(0.8) pruned
    assert decoded["single_bias"].tolist() == [-2.5] and (decoded["constant_bias"] == 3.25).all()


def test_broken_array_decodes_to_nan():
    codec = FedZip()
    update = {"w": _array([1, np.inf, 2]), "b/bias": _array([1, 2])}
    decoded = codec.decode(codec.encode(update), _shapes(update))
    assert np.isnan(decoded["w"]).all() and decoded["b/bias"].tolist() == [1, 2]


def test_size_report_matches_hand_counts():
    # a bias (not pruned) whose 3-means is itself: values -3 (x1), 0 (x5), 5 (x2)
    update = {"b/bias": _array([0, 5, 0, 0, -3, 5, 0, 0])}
    codec = FedZip()
    assert codec.quantise(update)["b/bias"].tolist() == update["b/bias"].tolist()
    report = codec.size_report(update)
    assert report["raw"] == 32 * 8
    assert report["huffman_reference"] == 2 * 1 + 2 + 5  # sort(c) . [2, 1, 1]
    assert report["huffman_true"] == 2 * 1 + 2 * 2 + 1 * 5  # lengths [2, 2, 1]
    assert report["position_reference"] == 27 * (1 + 2)
    # bitsize: 0 at [0, 2, 3, 6, 7] -> 0, 2, 1, 3, 1 -> 1+2+1+2+1 = 7; 5 at [1, 5] -> 1, 4 -> 1+3; -3 at [4] -> 3
    assert report["difference_reference"] == 4 + 3
    # 1 (arrays) + 1 (n) + 1 (m) + 12 (table) + Huffman: 1 (mode) + 3 (lengths) + 2 (11 bits)
    assert report["encoded"] == 8 * 21 == 8 * len(codec.encode(update))
    # position: 1 (mode) + 1 (implicit) + 2 (counts) + 1 (classes) + 3 + 1 (widths 2, 1, 2 coded) + 1 (5 bits)
    assert FedZip(encoding="position").size_report(update)["encoded"] == 8 * (15 + 10)


def test_gaussian_update_compresses_more_than_tenfold():
    rng = np.random.default_rng(5)
    update = {"dense/kernel": rng.normal(size=(500, 200)).astype(np.float32)}
    report = FedZip().size_report(update)
    assert report["raw"] / report["encoded"] > 10
    assert report["encoded"] <= 1.1 * min(report["huffman_true"], report["position_reference"])
    huffman_only = FedZip(encoding="huffman").size_report(update)
    assert huffman_only["huffman_true"] <= huffman_only["encoded"] <= 1.01 * huffman_only["huffman_true"]
    values = FedZip().quantise(update)["dense/kernel"]
    kept = np.count_nonzero(sparsify_mask(update["dense/kernel"], 0.8))
    assert kept == 20_000 and np.unique(values).size == 3


# --- corrupt payloads ------------------------------------------------------------------------------------------


def _corrupt_cases():
    rng = np.random.default_rng(6)
    update = {"conv/kernel": rng.normal(size=(4, 30)).astype(np.float32), "conv/bias": _array([1, 2, 2, 3]),
              "dense/kernel": rng.normal(size=300).astype(np.float32), "zeros": np.zeros(5, np.float32)}
    return update, _shapes(update)


@pytest.mark.parametrize("encoding", ["huffman", "position"])
def test_every_truncation_is_rejected(encoding):
    update, like = _corrupt_cases()
    codec = FedZip(encoding=encoding)
    payload = codec.encode(update)
    for size in range(len(payload)):
        with pytest.raises(CorruptPayload):
            codec.decode(payload[:size], like)
    with pytest.raises(CorruptPayload):
        codec.decode(payload + b"\x00", like)


def test_header_and_shape_mismatches_are_rejected():
    update, like = _corrupt_cases()
    codec = FedZip()
    payload = codec.encode(update)
    assert payload[0] == 4 and payload[1] == 120  # array count, then the first array's size
    for position, value in ((0, 3), (0, 5), (1, 119), (1, 0x80 | 120)):
        with pytest.raises(CorruptPayload):
            codec.decode(payload[:position] + bytes([value]) + payload[position + 1:], like)
    for shapes in ({**like, "conv/kernel": (4, 31)}, {**like, "extra": (2,)},
                   {name: like[name] for name in list(like)[:-1]}, {**like, "zeros": (0,)}):
        with pytest.raises(CorruptPayload):
            codec.decode(payload, shapes)
    with pytest.raises(CorruptPayload):
        codec.decode("not bytes", like)  # type: ignore[arg-type]


def _position_payload(table, implicit, counts, gaps) -> bytes:
    """A one-array position-mode payload built field by field."""
    gaps = np.array(gaps)
    widths = bit_length(gaps) - 1
    body = bytes([1, implicit]) + b"".join(uvarint(c) for c in counts)
    body += bytes([int(widths.max()) + 1]) + huffman.encode(widths, int(widths.max()) + 1)
    body += pack_fields(gaps - (1 << widths), widths)
    return uvarint(1) + uvarint(4) + bytes([len(table)]) + _array(table).tobytes() + body


def test_position_lists_are_validated():
    codec, like = FedZip(), {"w": (4,)}
    good = codec.decode(_position_payload([-1, 0, 1], 1, [1, 1], [1, 3]), like)["w"]
    assert good.tolist() == [-1, 0, 1, 0]
    for table, implicit, counts, gaps in (
        ([-1, 0, 1], 1, [1, 1], [3, 3]),  # the same position for two values
        ([0, 1], 0, [2], [3, 2]),  # position 4 of 4 entries
        ([0, 1], 0, [4], [1, 1, 1, 1]),  # no entry left for the implicit value
        ([0, 1], 2, [1], [1]),  # implicit index out of the table
        ([1, 0], 0, [1], [1]),  # a table out of order
        ([0, 0], 0, [1], [1]),  # a repeated value
        ([-0.0, 1], 0, [1], [1]),  # negative zero
        ([0, np.inf], 0, [1], [1]),  # not finite
        ([0, 1, 2, 3], 0, [1, 1, 1], [1, 1, 1]),  # more values than clusters
    ):
        with pytest.raises(CorruptPayload):
            codec.decode(_position_payload(table, implicit, counts, gaps), like)


@pytest.mark.parametrize("encoding", ["huffman", "position", "best"])
def test_random_corruptions_raise_only_corrupt_payload(encoding):
    update, like = _corrupt_cases()
    codec = FedZip(encoding=encoding)
    payload = codec.encode(update)
    rng = np.random.default_rng(7)
    rejected = 0
    for trial in range(200):
        data = bytearray(payload)
        if trial % 3 == 0:  # flipped bits
            for _ in range(int(rng.integers(1, 4))):
                data[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
        elif trial % 3 == 1:  # a random byte in the headers and tables
            data[int(rng.integers(min(40, len(data))))] = int(rng.integers(256))
        else:  # garbage
            data = bytearray(rng.integers(0, 256, int(rng.integers(0, 2 * len(payload)))).astype(np.uint8).tobytes())
        try:
            decoded = codec.decode(bytes(data), like)
        except CorruptPayload:
            rejected += 1
            continue
        assert {name: array.shape for name, array in decoded.items()} == like
        assert all(array.dtype == np.float32 for array in decoded.values())
    assert rejected >= 100  # garbage (a third of the trials) never decodes


def test_parameters_are_checked():
    for arguments in ({"sparsity": 1.5}, {"clusters": 0}, {"clusters": 256}, {"iterations": -1},
                      {"centroid_quirk": 1}, {"encoding": "zip"}):
        with pytest.raises(InvalidParameter):
            FedZip(**arguments)
    assert FedZip().name == "fedzip" and not FedZip.lossless
