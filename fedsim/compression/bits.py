"""Bit plumbing for the entropy coders: variable-width bit fields packed back to back, and LEB128 varints.

FedZip's position coding sends gaps between positions as a length class plus the gap's bits below its leading
one; the classes go through Huffman coding (`huffman`) and the remaining bits through `pack_fields`. Both directions
are vectorised (whole arrays at once, no Python loop over fields), so a million fields cost milliseconds.

Fields are written most significant bit first, one after the other, and the last byte is padded with zero bits,
which `unpack_fields` checks: a decoder should notice a payload whose bits it did not write.
"""

from __future__ import annotations

import numpy as np

from .base import CorruptPayload
from .payload import PayloadReader

__all__ = ["MAX_FIELD_WIDTH", "bit_length", "pack_fields", "read_uvarint", "unpack_fields", "uvarint"]

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


def uvarint(value: int) -> bytes:
    """LEB128 of a non-negative integer below 2**64: 7 bits a byte, least significant group first."""
    if not 0 <= value < 1 << 64:
        raise ValueError(f"varint out of range: {value}")
    out = bytearray()
    while True:
        group, value = value & 0x7F, value >> 7
        out.append(group | (0x80 if value else 0))
        if not value:
            return bytes(out)


def read_uvarint(reader: PayloadReader, what: str) -> int:
    """The next LEB128 integer of `reader`; `CorruptPayload` when truncated, longer than 10 bytes, or not in its
    shortest form (a last byte of 0 after others)."""
    value = 0
    for index in range(MAX_VARINT_BYTES):
        byte = reader.uint(1, what)
        value |= (byte & 0x7F) << (7 * index)
        if byte < 0x80:
            if byte == 0 and index > 0:
                raise CorruptPayload(f"{reader.codec}: {what} is a varint padded with a zero byte")
            if value >= 1 << 64:
                raise CorruptPayload(f"{reader.codec}: {what} exceeds 64 bits")
            return value
    raise CorruptPayload(f"{reader.codec}: {what} is a varint longer than {MAX_VARINT_BYTES} bytes")
