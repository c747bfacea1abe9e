"""Canonical Huffman coding of a small alphabet (the integers 0..k-1, k <= 256), vectorised with numpy.

FedZip's paper counts Huffman bits without building a code, and its bit-length vector [2, 1, 1] is not a prefix
code for three symbols; this module builds the real one, so what a FedZip update costs is what it sends.

A stream is self-describing: k bytes of code lengths (0 for an unused symbol), then the codewords, most significant
bit first, zero-padded to whole bytes. The code is canonical (codewords assigned in order of length, then symbol),
so the lengths define it. The symbol count is the caller's to store (FedZip knows it from the array's shape).

Decoding has no Python loop over symbols. A byte-wide state machine (a state is an internal node of the code tree)
gives, for each (state, byte), the symbols the byte completes and the state it ends in; the state at every byte
boundary comes from a two-level scan (every block of bytes from every start state at once, then the blocks in
order), and the symbols of all bytes are then gathered in one go. A decoder checks the lengths (Kraft equality: a
complete code, or the single-symbol code "0"), that the stream holds enough bits, and that the padding is zero.
"""

from __future__ import annotations

import functools
import heapq
import math
from typing import NamedTuple

import numpy as np

from .base import CorruptPayload
from .bits import MAX_FIELD_WIDTH, pack_fields

__all__ = ["MAX_ALPHABET", "code_lengths", "codewords", "decode", "decode_prefix", "encode", "encoded_bits",
           "symbol_counts"]

MAX_ALPHABET = 256  # symbols are uint8
_GROUP_TABLE = 1 << 14  # entries of the encoder's table of symbol runs


def code_lengths(counts: np.ndarray) -> np.ndarray:
    """Huffman code lengths (int64) for symbol `counts`: 0 for an unused symbol, 1 for a single used symbol.

    Ties merge the lighter subtree created first (leaves in symbol order before merged nodes), so the lengths are
    a deterministic function of the counts."""
    counts = np.asarray(counts)
    if counts.ndim != 1 or (counts.size and counts.min() < 0):
        raise ValueError("counts must be a 1-D array of non-negative integers")
    lengths = np.zeros(counts.size, dtype=np.int64)
    used = np.flatnonzero(counts > 0)
    if used.size == 1:
        lengths[used] = 1
    if used.size <= 1:
        return lengths
    heap = [(int(counts[symbol]), order, [int(symbol)]) for order, symbol in enumerate(used)]
    heapq.heapify(heap)
    order = len(heap)
    while len(heap) > 1:
        weight_a, _, symbols_a = heapq.heappop(heap)
        weight_b, _, symbols_b = heapq.heappop(heap)
        merged = symbols_a + symbols_b
        lengths[merged] += 1
        heapq.heappush(heap, (weight_a + weight_b, order, merged))
        order += 1
    return lengths


def codewords(lengths: np.ndarray) -> list[tuple[int, int, int]]:
    """The canonical code of `lengths`: (symbol, length, codeword) in order of (length, symbol)."""
    ranked = sorted((int(length), symbol) for symbol, length in enumerate(np.asarray(lengths).tolist()) if length)
    code, previous, out = 0, 0, []
    for length, symbol in ranked:
        code <<= length - previous
        out.append((symbol, length, code))
        code, previous = code + 1, length
    return out


def symbol_counts(symbols: np.ndarray, k: int) -> np.ndarray:
    """Occurrences of each of 0..k-1 in `symbols` (int64); one comparison pass per symbol for small alphabets,
    which beats `bincount`'s conversion of uint8 symbols to machine integers."""
    if k > 8:
        return np.bincount(np.asarray(symbols).reshape(-1), minlength=k).astype(np.int64)[:k]
    return np.array([np.count_nonzero(symbols == symbol) for symbol in range(k)], dtype=np.int64)


def encoded_bits(counts: np.ndarray) -> int:
    """Bits of the Huffman-coded stream of symbols with these counts (lengths header and padding excluded)."""
    counts = np.asarray(counts, dtype=np.int64)
    return int((counts * code_lengths(counts)).sum())


def _check_alphabet(k: int) -> None:
    if not 1 <= k <= MAX_ALPHABET:
        raise ValueError(f"alphabet size {k} outside [1, {MAX_ALPHABET}]")


@functools.lru_cache(maxsize=64)
def _group_code(lengths: tuple[int, ...]) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Codewords of runs of g symbols: (g, run codeword, run length, symbol codeword, symbol length), run tables
    indexed by the run's symbols read as a base-k number. Coding runs of g symbols with one table look-up makes
    the per-symbol work a few integer operations on n / g runs."""
    k, longest = len(lengths), max(lengths)
    group = 1
    while k ** (group + 1) <= _GROUP_TABLE and (group + 1) * longest <= MAX_FIELD_WIDTH:
        group += 1
    code = np.zeros(k, dtype=np.uint64)
    for symbol, _, word in codewords(np.array(lengths)):
        code[symbol] = word
    length = np.array(lengths, dtype=np.int64)
    run_code, run_length = code, length
    for _ in range(group - 1):
        run_code = ((run_code[:, None] << length.astype(np.uint64)[None, :]) | code[None, :]).reshape(-1)
        run_length = (run_length[:, None] + length[None, :]).reshape(-1)
    for array in (run_code, run_length, code, length):
        array.flags.writeable = False
    return group, run_code, run_length, code, length


def encode(symbols: np.ndarray, k: int) -> bytes:
    """`symbols` (integers in 0..k-1) as k code-length bytes and the canonical Huffman codewords of their counts."""
    _check_alphabet(k)
    symbols = np.asarray(symbols).reshape(-1)
    if symbols.size and (int(symbols.min()) < 0 or int(symbols.max()) >= k):
        raise ValueError(f"symbols outside 0..{k - 1}")
    lengths = code_lengths(symbol_counts(symbols, k))
    header = lengths.astype(np.uint8).tobytes()  # a code on <= 256 symbols is at most 255 bits long
    if not symbols.size:
        return header
    if int(lengths.max()) > MAX_FIELD_WIDTH:  # needs a Fibonacci-like count profile over > 6e11 symbols
        raise ValueError(f"a Huffman code longer than {MAX_FIELD_WIDTH} bits")
    group, run_code, run_length, code, length = _group_code(tuple(lengths.tolist()))
    whole = symbols.size - symbols.size % group
    runs = symbols[:whole].reshape(-1, group)
    index = np.zeros(runs.shape[0], dtype=np.intp)
    for column in range(group):
        index *= k
        index += runs[:, column]
    tail = symbols[whole:].astype(np.intp)
    fields = np.concatenate((run_code[index], code[tail]))
    widths = np.concatenate((run_length[index], length[tail]))
    return header + pack_fields(fields, widths)


class _Tables(NamedTuple):
    """The byte-wide state machine of one code: index (state * 256 + byte)."""

    states: int
    next_state: np.ndarray  # intp: the state after the byte, times 256
    emitted: np.ndarray  # uint8: symbols the byte completes (0..8)
    symbols: np.ndarray  # uint8 (.., 8): those symbols, in order
    ends: np.ndarray  # uint8 (.., 8): the bit (1..8) after each of them
    filled: np.ndarray  # bool (.., 8): which of the 8 slots of `symbols` hold a symbol


@functools.lru_cache(maxsize=32)
def _tables(lengths: tuple[int, ...]) -> _Tables:
    """The state machine of a complete code with these lengths (at least two used symbols)."""
    children = [[0, 0]]  # internal node -> [child of bit 0, child of bit 1]; a leaf is -(symbol + 1)
    for symbol, length, code in codewords(np.array(lengths)):
        node = 0
        for bit in range(length - 1):
            branch = (code >> (length - 1 - bit)) & 1
            if children[node][branch] <= 0:  # no internal child yet (0 never names the root as a child)
                children.append([0, 0])
                children[node][branch] = len(children) - 1
            node = children[node][branch]
        children[node][code & 1] = -(symbol + 1)
    child = np.array(children, dtype=np.int64)
    states = child.shape[0]
    state = np.repeat(np.arange(states), 256)
    byte = np.tile(np.arange(256), states)
    emitted = np.zeros(state.size, dtype=np.intp)
    symbols = np.zeros((state.size, 8), dtype=np.uint8)
    ends = np.zeros((state.size, 8), dtype=np.uint8)
    for bit in range(8):
        following = child[state, (byte >> (7 - bit)) & 1]
        leaf = np.flatnonzero(following < 0)
        symbols[leaf, emitted[leaf]] = -following[leaf] - 1
        ends[leaf, emitted[leaf]] = bit + 1
        emitted[leaf] += 1
        state = np.where(following < 0, 0, following)
    tables = _Tables(states, state * 256, emitted.astype(np.uint8), symbols, ends, np.arange(8) < emitted[:, None])
    for array in tables[1:]:
        array.flags.writeable = False
    return tables


def _byte_states(data: np.ndarray, tables: _Tables) -> np.ndarray:
    """The state (times 256) at the start of each byte of `data`, starting from the root."""
    size = data.size
    if tables.states == 1 or size == 0:
        return np.zeros(size, dtype=np.intp)
    width = max(8, math.isqrt(size // 16))  # bytes per block: 2 width numpy steps, size / width Python steps
    blocks = -(-size // width)
    padded = np.zeros(blocks * width, dtype=np.intp)  # the last block padded with zero bytes (never read back)
    padded[:size] = data
    grid = padded.reshape(blocks, width).T.copy()  # grid[t, b]: byte t of block b
    # every block from every start state at once
    state = np.broadcast_to(np.arange(tables.states, dtype=np.intp) * 256, (blocks, tables.states)).copy()
    for t in range(width):
        state = tables.next_state[state + grid[t][:, None]]
    final = state.tolist()
    # the blocks in order
    starts, current = [], 0
    for block in range(blocks):
        starts.append(current)
        current = final[block][current // 256]
    # every byte of every block from its block's start state
    state = np.array(starts, dtype=np.intp)
    out = np.empty((width, blocks), dtype=np.intp)
    for t in range(width):
        out[t] = state
        state = tables.next_state[state + grid[t]]
    return out.T.reshape(-1)[:size]


def decode_prefix(data: np.ndarray, count: int, k: int) -> tuple[np.ndarray, int]:
    """The `count` symbols (uint8) of the stream `encode(symbols, k)` wrote at the start of `data` (uint8), and the
    bytes it takes; bytes after it are left alone. `CorruptPayload` for anything inconsistent."""
    _check_alphabet(k)
    if count < 0:
        raise ValueError(f"negative symbol count {count}")
    if data.size < k:
        raise CorruptPayload(f"Huffman stream ends inside its {k} code lengths ({data.size} bytes)")
    lengths = data[:k].astype(np.int64)
    used = np.flatnonzero(lengths)
    if count == 0:
        if used.size:
            raise CorruptPayload("code lengths for an empty Huffman stream")
        return np.zeros(0, dtype=np.uint8), k
    if used.size == 0:
        raise CorruptPayload(f"no code lengths for {count} Huffman-coded symbols")
    if used.size == 1:  # the code "0": count zero bits
        if lengths[used[0]] != 1:
            raise CorruptPayload(f"a single-symbol code of length {lengths[used[0]]}, not 1")
        size = -(-count // 8)
        stream = data[k:k + size]
        if stream.size < size:
            raise CorruptPayload(f"Huffman stream truncated ({stream.size} of {size} bytes)")
        if stream.any():
            raise CorruptPayload("a 1 bit in a single-symbol Huffman stream")
        return np.full(count, used[0], dtype=np.uint8), k + size
    longest = int(lengths.max())
    if sum(1 << (longest - int(length)) for length in lengths[used]) != 1 << longest:
        raise CorruptPayload(f"code lengths {lengths[used].tolist()} violate Kraft equality")
    tables = _tables(tuple(lengths.tolist()))
    stream = data[k:k + min(data.size - k, -(-count * longest // 8))]
    key = _byte_states(stream, tables) + stream
    emitted = tables.emitted[key]
    total = np.cumsum(emitted, dtype=np.int64)
    if not total.size or total[-1] < count:
        raise CorruptPayload(f"Huffman stream truncated ({int(total[-1]) if total.size else 0} of {count} symbols)")
    last = int(np.searchsorted(total, count))  # the byte holding the last symbol
    used_key = key[:last + 1]
    symbols = np.take(tables.symbols, used_key, axis=0)[np.take(tables.filled, used_key, axis=0)][:count]
    end = int(tables.ends[key[last], count - (int(total[last]) - int(emitted[last])) - 1])
    if int(stream[last]) & ((1 << (8 - end)) - 1):
        raise CorruptPayload("non-zero padding after the Huffman stream")
    return symbols, k + last + 1


def decode(data: bytes, count: int, k: int) -> np.ndarray:
    """The `count` symbols (uint8) of `encode(symbols, k)`'s bytes; `CorruptPayload` for anything inconsistent,
    trailing bytes included."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    symbols, size = decode_prefix(buffer, count, k)
    if size != buffer.size:
        raise CorruptPayload(f"{buffer.size - size} bytes after the Huffman stream")
    return symbols
