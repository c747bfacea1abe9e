"""Bit plumbing shared by the codecs: bit fields packed back to back, and LEB128 varints.

Two bit layouts, each the one its format needs:
- `pack_fields`: fields of varying widths, most significant bit first. FedZip's position coding sends gaps between
  positions as a length class plus the gap's bits below its leading one; the classes go through Huffman coding
  (`huffman`) and the remaining bits through here.
- `pack_uniform`: fields of one width, least significant bit first (QSGD's levels), numpy's `packbits` order.
Varints: `uvarints` and `read_uvarints` for arrays (top-k's index gaps), `uvarint` and `read_uvarint` for one
number (headers); the single-number forms are the array forms on one element, so there is one coder.

Everything is vectorised (whole arrays at once, no Python loop over fields), so a million fields cost
milliseconds. The last byte of a bit block is padded with zero bits, which the readers check: a decoder should
notice a payload whose bits it did not write.
"""

from __future__ import annotations

import numpy as np

from .base import CorruptPayload
from .payload import PayloadReader

__all__ = ["MAX_FIELD_WIDTH", "bit_length", "check_uniform_padding", "pack_fields", "pack_uniform", "read_uvarint",
           "read_uvarints", "unpack_fields", "unpack_uniform", "uvarint", "uvarints"]

MAX_FIELD_WIDTH = 56  # a field and its offset inside a byte fit one 64-bit word
MAX_VARINT_BYTES = 10  # 7 bits a byte: any uint64


def bit_length(values: np.ndarray) -> np.ndarray:
    """floor(log2 v) + 1 of each non-negative integer v below 2**53 (0 for 0), as int64."""
    _, exponent = np.frexp(np.asarray(values, dtype=np.float64))  # exact below 2**53: v = m 2**e, 0.5 <= m < 1
    return exponent.astype(np.int64)


def pack_fields(values: np.ndarray, widths: np.ndarray) -> bytes:
    """`values[i]` in `widths[i]` bits (most significant first; 0 <= width <= 56, value < 2**width), concatenated
    and zero-padded to whole bytes: ceil(Σ widths / 8) bytes.

    Each field lands in the 64-bit word holding its first bit and, when it crosses a word boundary, in the next
    one; fields come in order, so the fields of a word are a run and one `bitwise_or.reduceat` merges them."""
    values = np.asarray(values, dtype=np.uint64).reshape(-1)
    widths = np.asarray(widths, dtype=np.int64).reshape(-1)
    if values.size != widths.size:
        raise ValueError(f"{values.size} values for {widths.size} widths")
    if widths.size and (int(widths.min()) < 0 or int(widths.max()) > MAX_FIELD_WIDTH):
        raise ValueError(f"field widths must lie in [0, {MAX_FIELD_WIDTH}]")
    ends = np.cumsum(widths)
    total = int(ends[-1]) if ends.size else 0
    if total == 0:
        return b""
    present = widths > 0
    if not present.all():
        values, widths, ends = values[present], widths[present], ends[present]
    starts = (ends - widths).astype(np.uint64)
    aligned = values << (64 - widths).astype(np.uint64)  # the field in the top bits of a word
    shift = starts & np.uint64(63)
    first = aligned >> shift
    second = (aligned << (np.uint64(63) - shift)) << np.uint64(1)  # what spills into the next word (0 if none)
    word = (starts >> np.uint64(6)).astype(np.intp)
    runs = np.flatnonzero(np.diff(word, prepend=-1))
    out = np.zeros(-(-total // 64) + 1, dtype=np.uint64)
    out[word[runs]] |= np.bitwise_or.reduceat(first, runs)
    out[word[runs] + 1] |= np.bitwise_or.reduceat(second, runs)
    return out.astype(">u8").tobytes()[:-(-total // 8)]


def unpack_fields(data: np.ndarray, widths: np.ndarray) -> tuple[np.ndarray, int]:
    """The uint64 values `pack_fields` wrote with these `widths` at the start of `data` (uint8), and the bytes
    they took. `CorruptPayload` when `data` is too short or the padding bits are not zero."""
    widths = np.asarray(widths, dtype=np.int64).reshape(-1)
    if widths.size and (int(widths.min()) < 0 or int(widths.max()) > MAX_FIELD_WIDTH):
        raise ValueError(f"field widths must lie in [0, {MAX_FIELD_WIDTH}]")
    ends = np.cumsum(widths)
    total = int(ends[-1]) if ends.size else 0
    size = -(-total // 8)
    if size > data.size:
        raise CorruptPayload(f"the payload ends inside bit fields ({size} bytes needed, {data.size} left)")
    if total % 8 and int(data[size - 1]) & ((1 << (8 - total % 8)) - 1):
        raise CorruptPayload("non-zero padding after bit fields")
    if total == 0:
        return np.zeros(widths.size, dtype=np.uint64), 0
    padded = np.zeros(size + 9, dtype=np.uint64)
    padded[:size] = data[:size]
    words = np.zeros(size + 1, dtype=np.uint64)  # the 64 bits from each byte on (and from the end: for 0-wide fields)
    for byte in range(8):
        words = (words << np.uint64(8)) | padded[byte:byte + size + 1]
    starts = ends - widths
    word = words[starts >> 3] << (starts & 7).astype(np.uint64)
    shift = np.where(widths > 0, 64 - widths, 0).astype(np.uint64)
    return np.where(widths > 0, word >> shift, np.uint64(0)), size


def pack_uniform(numbers: np.ndarray, width: int) -> bytes:
    """Non-negative integers below 2**width (width <= 32), `width` bits each, least significant bit first, then
    zero bits to a whole byte: ceil(n width / 8) bytes."""
    numbers = np.asarray(numbers).reshape(-1)
    planes = np.empty((numbers.size, width), dtype=np.uint8)
    for bit in range(width):
        planes[:, bit] = (numbers >> bit) & 1
    return np.packbits(planes.reshape(-1), bitorder="little").tobytes()


def unpack_uniform(packed: np.ndarray, count: int, width: int) -> np.ndarray:
    """The `count` integers (uint32) `pack_uniform` wrote into `packed` (uint8, ceil(count width / 8) bytes)."""
    planes = np.unpackbits(packed, count=count * width, bitorder="little").reshape(count, width)
    numbers = np.zeros(count, dtype=np.uint32)
    for bit in range(width):
        numbers |= planes[:, bit].astype(np.uint32) << np.uint32(bit)
    return numbers


def check_uniform_padding(packed: np.ndarray, used_bits: int, what: str) -> None:
    """`CorruptPayload` when a bit after the first `used_bits` of `packed` (least significant first) is set: the
    encoder writes zeros there."""
    if used_bits % 8 and int(packed[-1]) >> (used_bits % 8):
        raise CorruptPayload(f"{what} have non-zero padding bits")


def _varint_lengths(numbers: np.ndarray) -> np.ndarray:
    lengths = np.ones(numbers.size, dtype=np.int64)
    for bits in range(7, 7 * MAX_VARINT_BYTES, 7):
        lengths += numbers >= np.uint64(1 << bits)
    return lengths


def uvarints(numbers: np.ndarray) -> bytes:
    """LEB128 of each non-negative integer below 2**64 (7 bits a byte, least significant group first), back to
    back, each in its shortest form."""
    numbers = np.asarray(numbers).reshape(-1)
    if numbers.size and numbers.dtype.kind == "i" and int(numbers.min()) < 0:
        raise ValueError(f"varint out of range: {numbers.min()}")
    numbers = numbers.astype(np.uint64)
    lengths = _varint_lengths(numbers)
    out = np.zeros(int(lengths.sum()), dtype=np.uint8)
    starts = np.cumsum(lengths) - lengths
    for position in range(MAX_VARINT_BYTES):
        present = lengths > position
        if not present.any():
            break
        group = (numbers[present] >> np.uint64(7 * position)) & np.uint64(0x7F)
        more = np.where(lengths[present] > position + 1, 0x80, 0).astype(np.uint64)
        out[starts[present] + position] = group | more
    return out.tobytes()


def read_uvarints(reader: PayloadReader, count: int, what: str,
                  max_bytes: int = MAX_VARINT_BYTES) -> np.ndarray:
    """`count` LEB128 integers (uint64) read from `reader`. `CorruptPayload` when the payload ends inside them, or
    one is longer than `max_bytes`, exceeds 64 bits or is not in its shortest form (a last byte of 0 after
    others)."""
    if count == 0:
        return np.zeros(0, dtype=np.uint64)
    window = np.frombuffer(reader.view[reader.position:reader.position + max_bytes * count], dtype=np.uint8)
    ends = np.flatnonzero(window < 0x80)[:count]  # the last byte of each varint has the high bit clear
    if ends.size < count:
        if window.size < max_bytes * count:
            raise CorruptPayload(f"{reader.codec}: the payload ends inside {what} ({ends.size} of {count} varints)")
        raise CorruptPayload(f"{reader.codec}: a varint longer than {max_bytes} bytes in {what}")
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > max_bytes:
        raise CorruptPayload(f"{reader.codec}: a varint longer than {max_bytes} bytes in {what}")
    block = window[: ends[-1] + 1]
    if np.any((block[ends] == 0) & (lengths > 1)):
        raise CorruptPayload(f"{reader.codec}: a varint padded with a zero byte in {what}")
    if np.any((lengths == MAX_VARINT_BYTES) & (block[ends] > 1)):  # the tenth byte holds bit 63 only
        raise CorruptPayload(f"{reader.codec}: a varint above 64 bits in {what}")
    reader.take(block.size, what)
    shifts = (7 * (np.arange(block.size) - np.repeat(starts, lengths))).astype(np.uint64)
    return np.bitwise_or.reduceat((block & 0x7F).astype(np.uint64) << shifts, starts)


def uvarint(value: int) -> bytes:
    """LEB128 of one non-negative integer below 2**64 (`uvarints` of one number)."""
    if not 0 <= value < 1 << 64:
        raise ValueError(f"varint out of range: {value}")
    return uvarints(np.array([value], dtype=np.uint64))


def read_uvarint(reader: PayloadReader, what: str) -> int:
    """The next LEB128 integer of `reader` (`read_uvarints` of one number)."""
    return int(read_uvarints(reader, 1, what)[0])
