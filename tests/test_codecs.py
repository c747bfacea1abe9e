"""The update codecs: top-k and random-k sparsification, QSGD, fp16/bf16 and the raw float32 reference.

Each codec is checked for what it promises: the entries top-k keeps (hand-computed, ties included), random-k's
indices regenerated from the seed and uniform, QSGD's unbiasedness and its variance bound (Alistarh et al. 2017,
Lemma 3.1) against the exact per-entry variances, the casts against torch's own bit for bit, payload sizes against
the documented formulas, and decoders that answer any corrupt payload with `CorruptPayload` and nothing else.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from fedsim.compression.base import Compressor, CorruptPayload
from fedsim.compression.bits import unpack_uniform
from fedsim.compression.floats import BFloat16, Float16, Identity
from fedsim.compression.quantize import QSGD
from fedsim.compression.sparsify import RandomK, TopK, kept_count, top_indices
from fedsim.protocol.constraints import InvalidParameter


def bits(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=np.float32).view(np.uint32)


def shapes(update: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    return {name: array.shape for name, array in update.items()}


def round_trip(codec: Compressor, update: dict[str, np.ndarray], seed: int = 0) -> dict[str, np.ndarray]:
    return codec.decode(codec.encode(update, np.random.default_rng(seed)), shapes(update))


def sample_update(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"conv.weight": rng.standard_normal((4, 3, 5)).astype(np.float32),
            "conv.bias": rng.standard_normal(4).astype(np.float32),
            "empty": np.zeros((0, 3), dtype=np.float32),
            "scalar": np.array(-0.75, dtype=np.float32)}


# --- top-k -----------------------------------------------------------------------------------------------------

TIES = np.array([0.5, -2.0, 2.0, 1.0, -1.0, 2.0, 0.0, -0.5], dtype=np.float32)


@pytest.mark.parametrize(("ratio", "kept"), [(0.25, [1, 2]), (0.375, [1, 2, 5]), (0.5, [1, 2, 3, 5]),
                                             (0.625, [1, 2, 3, 4, 5]), (0.75, [0, 1, 2, 3, 4, 5]),
                                             (0.01, [1]), (1.0, list(range(8)))])
def test_topk_keeps_the_largest_magnitudes_ties_to_the_lower_index(ratio, kept):
    expected = np.zeros(8, dtype=np.float32)
    expected[kept] = TIES[kept]
    decoded = round_trip(TopK(ratio), {"x": TIES})["x"]
    assert np.array_equal(bits(decoded), bits(expected))


def test_topk_ranks_nan_above_inf_and_keeps_their_bits():
    x = np.array([0x3F800000, 0x7F800000, 0x7F800001, 0xFF800000, 0x80000000], dtype=np.uint32).view(np.float32)
    assert top_indices(x, 2).tolist() == [1, 2]  # NaN first, then inf before -inf (lower index)
    decoded = round_trip(TopK(0.4), {"x": x})["x"]
    assert bits(decoded).tolist() == [0, bits(np.inf), 0x7F800001, 0, 0]


def test_topk_matches_a_sorting_reference_on_many_ties():
    rng = np.random.default_rng(1)
    for trial in range(30):
        x = rng.integers(-4, 5, size=int(rng.integers(1, 300))).astype(np.float32) * 0.5
        k = kept_count(float(rng.uniform(0.01, 1.0)), x.size)
        order = np.lexsort((np.arange(x.size), -np.abs(x)))  # by magnitude descending, then index ascending
        assert top_indices(x, k).tolist() == sorted(order[:k].tolist()), trial


def test_kept_count():
    assert [kept_count(0.01, n) for n in (0, 1, 49, 150, 1000)] == [0, 1, 1, 2, 10]
    assert kept_count(1.0, 7) == 7 and kept_count(0.5, 5) == 2  # round half to even


def test_topk_round_trip_is_the_masked_update_bitwise():
    update = sample_update()
    decoded = round_trip(TopK(0.3), update)
    for name, array in update.items():
        flat = array.reshape(-1)
        mask = np.zeros(flat.size, dtype=bool)
        mask[top_indices(flat, kept_count(0.3, flat.size))] = True
        expected = np.where(mask, flat, np.float32(0)).reshape(array.shape)
        assert decoded[name].dtype == np.float32 and decoded[name].shape == array.shape
        assert np.array_equal(bits(decoded[name]), bits(expected)), name


def test_topk_payload_bytes_by_hand():
    x = np.zeros(10, dtype=np.float32)
    x[[3, 7]] = [1.5, -2.5]  # gaps 3 and 3: two varint bytes beat four uint16 bytes
    payload = TopK(0.2).encode({"x": x}, np.random.default_rng(0))
    assert payload == (b"\x02\x00\x00\x00" + b"\x01" + b"\x03\x03" + np.float32([1.5, -2.5]).tobytes())
    y = np.zeros(300, dtype=np.float32)
    y[[0, 200]] = [3.0, 4.0]  # gaps 0 and 199: 0x00, then 0xC7 0x01 (LEB128), 3 bytes against 4
    payload = TopK(2 / 300).encode({"y": y}, np.random.default_rng(0))
    assert payload == (b"\x02\x00\x00\x00" + b"\x01" + b"\x00\xc7\x01" + np.float32([3.0, 4.0]).tobytes())


def test_topk_uses_fixed_width_indices_when_gaps_are_long():
    x = np.zeros(65536, dtype=np.float32)
    x[[20000, 60000]] = [1.0, -1.0]  # gaps 20000 and 39999 take 3 varint bytes each: uint16 indices are cheaper
    payload = TopK(2 / 65536).encode({"x": x}, np.random.default_rng(0))
    assert payload == (b"\x02\x00\x00\x00" + b"\x00" + np.array([20000, 60000], "<u2").tobytes()
                       + np.float32([1.0, -1.0]).tobytes())
    assert np.array_equal(TopK(2 / 65536).decode(payload, {"x": (65536,)})["x"], x)


def leb128_length(number: int) -> int:
    return max(1, math.ceil(number.bit_length() / 7))


@pytest.mark.parametrize("size", [1, 17, 5000, 65536, 65537, 200_000])
@pytest.mark.parametrize("ratio", [0.001, 0.05, 0.6])
def test_topk_payload_size_formula(size, ratio):
    x = np.random.default_rng(size).standard_normal(size).astype(np.float32)
    payload = TopK(ratio).encode({"x": x, "empty": np.zeros(0, np.float32)}, np.random.default_rng(0))
    kept = top_indices(x, kept_count(ratio, size)).tolist()
    gaps = [kept[0]] + [b - a - 1 for a, b in zip(kept, kept[1:], strict=False)]
    fixed = len(kept) * (2 if size <= 65536 else 4)
    index_bytes = min(fixed, sum(leb128_length(gap) for gap in gaps))
    assert len(payload) == (5 + index_bytes + 4 * len(kept)) + 5


# --- random-k ----------------------------------------------------------------------------------------------------

def kept_positions(decoded: np.ndarray) -> np.ndarray:
    return np.flatnonzero(decoded.reshape(-1))


def test_randk_indices_come_from_the_seed_in_the_payload():
    codec = RandomK(0.1)
    update = {"a": np.arange(1, 51, dtype=np.float32), "b": np.arange(1, 201, dtype=np.float32).reshape(10, 20)}
    payload = codec.encode(update, np.random.default_rng(7))
    assert len(payload) == 8 + 4 * (5 + 20)
    seed = int.from_bytes(payload[:8], "little")
    generator = np.random.default_rng(seed)
    decoded = codec.decode(payload, shapes(update))
    for name, array in update.items():  # one generator, drawn from in the arrays' order
        expected = np.sort(generator.choice(array.size, kept_count(0.1, array.size), replace=False, shuffle=False))
        assert kept_positions(decoded[name]).tolist() == expected.tolist()
        assert np.array_equal(decoded[name].reshape(-1)[expected], array.reshape(-1)[expected])
    assert payload == codec.encode(update, np.random.default_rng(7))
    assert payload[:8] != codec.encode(update, np.random.default_rng(8))[:8]


def test_randk_keeps_each_index_with_frequency_k_over_n():
    n, trials = 40, 3000
    codec = RandomK(0.1)
    x = {"x": np.arange(1, n + 1, dtype=np.float32)}
    rng = np.random.default_rng(3)
    counts = np.zeros(n)
    for _ in range(trials):
        counts[kept_positions(round_trip_rng(codec, x, rng)["x"])] += 1
    assert counts.sum() == trials * 4
    p = 4 / n
    sigma = math.sqrt(trials * p * (1 - p))
    assert np.max(np.abs(counts - trials * p)) < 5 * sigma


def round_trip_rng(codec: Compressor, update: dict[str, np.ndarray], rng: np.random.Generator
                   ) -> dict[str, np.ndarray]:
    return codec.decode(codec.encode(update, rng), shapes(update))


def test_randk_unbiased_scales_by_n_over_k_and_is_unbiased():
    n, k, trials = 30, 3, 4000
    x = np.random.default_rng(4).standard_normal(n).astype(np.float32)
    codec = RandomK(k / n, unbiased=True)
    rng = np.random.default_rng(5)
    total = np.zeros(n)
    for _ in range(trials):
        decoded = round_trip_rng(codec, {"x": x}, rng)["x"]
        kept = kept_positions(decoded)
        assert kept.size == k
        assert np.array_equal(bits(decoded[kept]), bits(x[kept] * np.float32(n / k)))
        total += decoded
    sigma = np.abs(x) * math.sqrt((n / k - 1) / trials)  # sd of the mean of a value kept w.p. k/n, scaled n/k
    assert np.all(np.abs(total / trials - x) < 5 * sigma + 1e-6)


def test_randk_biased_keeps_the_values_bitwise():
    update = sample_update(2)
    decoded = round_trip(RandomK(0.5), update, seed=3)
    for name, array in update.items():
        kept = kept_positions(decoded[name])
        assert kept.size == kept_count(0.5, array.size) or name == "scalar"  # a -0.75 is kept, never zero
        assert np.array_equal(bits(decoded[name].reshape(-1)[kept]), bits(array.reshape(-1)[kept]))


# --- QSGD --------------------------------------------------------------------------------------------------------

def qsgd_parts(payload: bytes, n: int, s: int) -> tuple[float, np.ndarray]:
    """The norm and levels of a one-array, one-bucket QSGD payload."""
    width = s.bit_length()
    norm = float(np.frombuffer(payload[:4], "<f4")[0])
    levels = unpack_uniform(np.frombuffer(payload[4:4 + math.ceil(n * width / 8)], np.uint8), n, width)
    return norm, levels


def sent_norm(x: np.ndarray) -> float:
    """The smallest float32 at or above x's L2 norm."""
    exact = float(np.linalg.norm(x.astype(np.float64)))
    norm = np.float32(exact)
    return float(norm if float(norm) >= exact else np.nextafter(norm, np.float32(np.inf)))


def exact_moments(x: np.ndarray, s: int) -> tuple[float, np.ndarray]:
    """The norm QSGD sends and each entry's variance norm²/s² p(1-p), p the fractional part of s|x|/norm."""
    norm = sent_norm(x)
    ratio = s * np.abs(x.astype(np.float64)) / norm
    p = ratio - np.floor(ratio)
    return norm, (norm / s) ** 2 * p * (1 - p)


@pytest.mark.parametrize("s", [1, 3, 16])
def test_qsgd_is_unbiased(s):
    x = np.array([0.3, -1.2, 0.0, 2.5, -0.01, 0.7, 1e-3, -2.0], dtype=np.float32)
    trials = 3000
    codec = QSGD(levels=s)
    rng = np.random.default_rng(s)
    total = np.zeros(x.size)
    for _ in range(trials):
        total += round_trip_rng(codec, {"x": x}, rng)["x"]
    _, variance = exact_moments(x, s)
    assert np.all(np.abs(total / trials - x) <= 5 * np.sqrt(variance / trials) + 1e-6)


def test_qsgd_buckets_are_unbiased_and_independent():
    x = np.array([0.3, -1.2, 0.0, 2.5, -0.01], dtype=np.float32)
    copies = 20000  # one array of many buckets, each a copy of x with x's norm
    decoded = round_trip(QSGD(levels=2, bucket_size=x.size), {"x": np.tile(x, copies)})["x"].reshape(copies, -1)
    norm, variance = exact_moments(x, 2)
    assert np.all(np.abs(decoded.mean(axis=0) - x) <= 5 * np.sqrt(variance / copies) + 1e-6)
    # each entry is two-valued, c(1-p) or -cp from x (c = norm/s), so its fourth central moment is
    # c^4 p(1-p)((1-p)^3 + p^3), and the sample variance's sd is sqrt((fourth - variance^2) / copies)
    ratio = 2 * np.abs(x.astype(np.float64)) / norm
    p = ratio - np.floor(ratio)
    fourth = (norm / 2) ** 4 * p * (1 - p) * ((1 - p) ** 3 + p**3)
    spread = np.sqrt((fourth - variance**2) / copies)
    assert np.all(np.abs(decoded.var(axis=0) - variance) <= 5 * spread + 1e-9)


@pytest.mark.parametrize("s", [1, 4, 16, 255])
@pytest.mark.parametrize("kind", ["gaussian", "sparse", "uniform"])
def test_qsgd_variance_within_the_papers_bound(s, kind):
    rng = np.random.default_rng(s)
    n = 500
    x = {"gaussian": rng.standard_normal(n), "uniform": np.ones(n),
         "sparse": np.where(rng.random(n) < 0.02, rng.standard_normal(n), 0.0)}[kind].astype(np.float32)
    norm, variance = exact_moments(x, s)
    bound = min(n / s**2, math.sqrt(n) / s) * norm**2
    assert variance.sum() <= bound
    trials = 200
    errors = [np.sum((round_trip_rng(QSGD(levels=s), {"x": x}, rng)["x"].astype(np.float64) - x) ** 2)
              for _ in range(trials)]
    # a sum of independent terms, each at most (norm/s)^2 /4 from its mean: 6 sd of the mean of the trials
    spread = math.sqrt(np.sum(variance) * (norm / s) ** 2 / trials) + 1e-9
    assert abs(np.mean(errors) - variance.sum()) < 6 * spread + 1e-6 * norm**2
    assert np.mean(errors) <= bound + 6 * spread


@pytest.mark.parametrize("s", [1, 5, 16, 1000])
def test_qsgd_levels_in_range_and_decode_formula(s):
    x = np.random.default_rng(s).standard_normal(333).astype(np.float32)
    payload = QSGD(levels=s).encode({"x": x}, np.random.default_rng(0))
    norm, levels = qsgd_parts(payload, x.size, s)
    assert levels.max() <= s and set(np.unique(levels)) <= set(range(s + 1))
    assert norm == sent_norm(x)
    decoded = QSGD(levels=s).decode(payload, {"x": (333,)})["x"]
    expected = (np.where(levels > 0, np.sign(x), 1) * (norm / s * levels.astype(np.float64))).astype(np.float32)
    assert np.array_equal(decoded, expected)
    nnz = int(np.count_nonzero(levels))
    assert len(payload) == 4 + math.ceil(333 * s.bit_length() / 8) + math.ceil(nnz / 8)


def test_qsgd_single_entry_is_exact_and_zero_stays_zero():
    x = {"one": np.array([0, 0, -3.25, 0], dtype=np.float32), "zero": np.zeros((2, 2), np.float32),
         "empty": np.zeros(0, np.float32)}
    decoded = round_trip(QSGD(levels=16), x)
    assert np.array_equal(bits(decoded["one"]), bits(x["one"]))
    assert np.array_equal(bits(decoded["zero"]), bits(x["zero"])) and decoded["empty"].shape == (0,)


@pytest.mark.parametrize("bucket_size", [0, 7, 64])
def test_qsgd_payload_size_formula(bucket_size):
    update = sample_update(5)
    codec = QSGD(levels=6, bucket_size=bucket_size)
    payload = codec.encode(update, np.random.default_rng(1))
    decoded = codec.decode(payload, shapes(update))
    expected = 0
    for name, array in update.items():
        n = array.size
        buckets = 0 if n == 0 else 1 if bucket_size == 0 else math.ceil(n / bucket_size)
        expected += 4 * buckets + math.ceil(n * 3 / 8) + math.ceil(np.count_nonzero(decoded[name]) / 8)
    assert len(payload) == expected


def test_qsgd_a_non_finite_bucket_decodes_to_nan_and_spares_the_others():
    x = np.arange(1, 13, dtype=np.float32)
    x[5] = np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        decoded = round_trip(QSGD(levels=4, bucket_size=4), {"x": x})["x"]
    assert np.isnan(decoded[4:8]).all() and np.isfinite(decoded[:4]).all() and np.isfinite(decoded[8:]).all()


def test_qsgd_rejects_levels_above_s_and_negative_norms():
    codec = QSGD(levels=4)  # 3 bits a level: 5, 6 and 7 cannot be sent
    good = codec.encode({"x": np.ones(2, np.float32)}, np.random.default_rng(0))
    with pytest.raises(CorruptPayload, match="level 7 above 4"):
        codec.decode(good[:4] + bytes([0b111111]) + good[5:] + b"\x00", {"x": (2,)})
    with pytest.raises(CorruptPayload, match="negative norm"):
        codec.decode(np.float32(-1).tobytes() + good[4:], {"x": (2,)})
    assert good[4] >> 6 == 0 and len(good) == 4 + 1 + 1
    with pytest.raises(CorruptPayload, match="levels have non-zero padding"):
        codec.decode(good[:4] + bytes([good[4] | 0x80]) + good[5:], {"x": (2,)})
    with pytest.raises(CorruptPayload, match="signs have non-zero padding"):
        codec.decode(good[:5] + bytes([good[5] | 0x80]), {"x": (2,)})


# --- fp16, bf16, identity ----------------------------------------------------------------------------------------

def awkward_floats() -> np.ndarray:
    """Random bit patterns (every exponent), float32 ties for both casts, subnormals, overflow, infs and NaNs."""
    rng = np.random.default_rng(11)
    patterns = rng.integers(0, 1 << 32, size=100_000, dtype=np.uint64).astype(np.uint32)
    bf16_ties = (rng.integers(0, 1 << 16, size=5000, dtype=np.uint32) << 16) | np.uint32(0x8000)
    halves = rng.integers(0, 0x7BFF, size=5000).astype(np.uint16)  # finite halves and their successor
    low, high = halves.view(np.float16).astype(np.float64), (halves + 1).view(np.float16).astype(np.float64)
    half_ties = ((low + high) / 2).astype(np.float32)  # exact: 12 significant bits
    special = np.array([0x00000001, 0x80000001, 0x00008000, 0x00018000, 0x007FFFFF, 0x00800000, 0x7F7FFFFF,
                        0xFF7FFFFF, 0x7F7F8000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F800001,
                        0x7FBFFFFF, 0x80000000, 0, 0x477FEFFF, 0x477FF000, 0x387FC000, 0x33000000, 0x33000001],
                       dtype=np.uint32)
    return np.concatenate([patterns, bf16_ties, half_ties.view(np.uint32), special]).view(np.float32)


@pytest.mark.parametrize(("codec", "dtype"), [(Float16(), torch.float16), (BFloat16(), torch.bfloat16)])
def test_casts_match_torch_bitwise(codec, dtype):
    x = awkward_floats()
    ours = round_trip(codec, {"x": x})["x"]
    theirs = torch.from_numpy(x.copy()).to(dtype).float().numpy()
    nan = np.isnan(theirs)
    assert np.array_equal(np.isnan(ours), nan)  # a NaN stays a NaN (torch's NaN bits depend on its kernel)
    assert np.array_equal(bits(ours[~nan]), bits(theirs[~nan]))
    assert len(codec.encode({"x": x}, np.random.default_rng(0))) == 2 * x.size


def test_bf16_payload_by_hand():
    x = np.array([0x3F808000, 0x3F818000, 0x7F7FFFFF, 0xFF800001], dtype=np.uint32).view(np.float32)
    payload = BFloat16().encode({"x": x}, np.random.default_rng(0))
    # a tie to the even 0x3F80, a tie up to the even 0x3F82, overflow to inf, a signalling NaN quietened
    assert np.frombuffer(payload, "<u2").tolist() == [0x3F80, 0x3F82, 0x7F80, 0xFFC0]


def test_fp16_overflows_to_inf():
    x = np.array([65504, 65519.99, 65520, -1e6, 1e-8], dtype=np.float32)
    decoded = round_trip(Float16(), {"x": x})["x"]
    assert decoded.tolist() == [65504, 65504, np.inf, -np.inf, np.float32(np.float16(1e-8))]


def test_identity_is_the_raw_bytes_and_lossless():
    update = sample_update(6)
    update["nan"] = np.array([0x7F800001, 0xFFC00123, 0x80000000], dtype=np.uint32).view(np.float32)
    payload = Identity().encode(update, np.random.default_rng(0))
    assert payload == b"".join(array.astype("<f4").tobytes() for array in update.values())
    decoded = Identity().decode(payload, shapes(update))
    assert Identity.lossless and not TopK.lossless
    for name, array in update.items():
        assert decoded[name].flags.writeable and np.array_equal(bits(decoded[name]), bits(array))


def test_reconstruct_is_the_decoded_encoding():
    update = sample_update(8)
    for codec in (TopK(0.2), RandomK(0.2), QSGD(levels=3), Float16(), BFloat16()):
        reconstructed = codec.reconstruct(update, np.random.default_rng(9))
        decoded = round_trip(codec, update, seed=9)
        for name in update:
            assert np.array_equal(bits(reconstructed[name]), bits(decoded[name])), (codec.name, name)


# --- parameters --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("factory", "argument"), [
    (lambda: TopK(0), "ratio"), (lambda: TopK(1.5), "ratio"), (lambda: RandomK(0.1, unbiased=1), "unbiased"),
    (lambda: QSGD(levels=0), "levels"), (lambda: QSGD(levels=1 << 16), "levels"),
    (lambda: QSGD(bucket_size=-1), "bucket_size"), (lambda: QSGD(levels=2.0), "levels")])
def test_bad_parameters_are_refused(factory, argument):
    with pytest.raises(InvalidParameter) as error:
        factory()
    assert error.value.name == argument


# --- corrupt payloads --------------------------------------------------------------------------------------------

CODECS = [Identity(), Float16(), BFloat16(), TopK(0.3), TopK(1.0), RandomK(0.3), RandomK(0.3, unbiased=True),
          QSGD(levels=5), QSGD(levels=2, bucket_size=3)]


def decodes_or_refuses(codec: Compressor, payload: object, like: dict[str, tuple[int, ...]]) -> bool:
    """True when the payload decoded to `like`'s arrays, False when it raised CorruptPayload; else the test fails."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a numpy warning would be a decoder not checking what it reads
        try:
            decoded = codec.decode(payload, like)  # type: ignore[arg-type]
        except CorruptPayload as error:
            assert "\n" not in str(error) and str(error)
            return False
    assert list(decoded) == list(like)
    for name, shape in like.items():
        assert decoded[name].shape == tuple(shape) and decoded[name].dtype == np.float32
    return True


@pytest.mark.parametrize("codec", CODECS, ids=lambda codec: f"{codec.name}-{vars(codec)}")
def test_truncated_or_extended_payloads_are_refused(codec):
    update = sample_update(10)
    payload = codec.encode(update, np.random.default_rng(0))
    assert decodes_or_refuses(codec, payload, shapes(update))
    for length in range(len(payload)):
        assert not decodes_or_refuses(codec, payload[:length], shapes(update)), length
    assert not decodes_or_refuses(codec, payload + b"\x00", shapes(update))


@pytest.mark.parametrize("codec", CODECS, ids=lambda codec: f"{codec.name}-{vars(codec)}")
def test_flipped_bytes_wrong_shapes_and_garbage_raise_only_corrupt_payload(codec):
    rng = np.random.default_rng(12)
    update = sample_update(11)
    like = shapes(update)
    payload = codec.encode(update, np.random.default_rng(1))
    outcomes = set()
    for _ in range(200):
        flipped = bytearray(payload)
        for position in rng.integers(0, len(payload), size=int(rng.integers(1, 4))):
            flipped[position] ^= int(rng.integers(1, 256))
        outcomes.add(decodes_or_refuses(codec, bytes(flipped), like))
    for _ in range(200):
        wrong = {name: tuple(int(d) for d in rng.integers(0, 6, size=int(rng.integers(0, 4))))
                 for name in rng.choice(["a", "b", "conv.weight", "empty"], size=int(rng.integers(0, 4)))}
        outcomes.add(decodes_or_refuses(codec, payload, wrong))
    for _ in range(200):
        garbage = rng.integers(0, 256, size=int(rng.integers(0, 120)), dtype=np.uint8).tobytes()
        outcomes.add(decodes_or_refuses(codec, garbage, like))
    assert False in outcomes  # some were refused (and none escaped as another error)
    for not_bytes in (None, "text", 12, [1, 2]):
        assert not decodes_or_refuses(codec, not_bytes, like)


def test_topk_refuses_unordered_and_out_of_range_indices():
    codec = TopK(0.5)
    values = np.float32([1, 2]).tobytes()
    like = {"x": (4,)}
    assert codec.decode(b"\x02\x00\x00\x00\x00" + np.array([1, 3], "<u2").tobytes() + values, like)["x"].tolist() \
        == [0, 1, 0, 2]
    for indices, reason in (([3, 1], "ascending"), ([1, 1], "ascending"), ([1, 4], "out of")):
        with pytest.raises(CorruptPayload, match=reason):
            codec.decode(b"\x02\x00\x00\x00\x00" + np.array(indices, "<u2").tobytes() + values, like)
    with pytest.raises(CorruptPayload, match="gap"):
        codec.decode(b"\x02\x00\x00\x00\x01\x00\x04" + values, like)
    with pytest.raises(CorruptPayload, match="longer than 5 bytes"):
        codec.decode(b"\x02\x00\x00\x00\x01\x00" + b"\x80" * 5 + b"\x00" + values, {"x": (10**6,)})
    with pytest.raises(CorruptPayload, match="padded with a zero byte"):  # 0x81 0x00 is an overlong 1
        codec.decode(b"\x02\x00\x00\x00\x01\x00\x81\x00" + values, like)
    assert codec.decode(b"\x02\x00\x00\x00\x01\x00\x01" + values, like)["x"].tolist() == [1, 0, 2, 0]
    with pytest.raises(CorruptPayload, match="5 entries kept"):
        codec.decode(b"\x05\x00\x00\x00\x00" + bytes(30), like)
    with pytest.raises(CorruptPayload, match="index mode"):
        codec.decode(b"\x02\x00\x00\x00\x07" + bytes(12), like)
