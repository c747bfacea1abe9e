"""Compression as a layer on train replies: the ClientApp encodes its update, the server's Grid decodes it.

No strategy sees it. A client trains, then `compress_reply` replaces its reply's float arrays with one framed
payload: the update Δ = w_local − w_global of every float array the server sent, encoded by the configured
compressor, in an ArrayRecord of one uint8 Array (`COMPRESSED_RECORD`), so the encoded bytes are what Flower
serialises and sends. Arrays that are not updates (integer buffers, arrays the server did not send) stay raw in
the reply's `arrays` (absent when there are none). The server's Grid calls `decompress_reply` before any reply
check: it rebuilds `w_global + decode(payload)` under the reply's `arrays` from the message it sent, and a payload
that does not decode is a rejected reply (`CorruptPayload`), never a crash. So every strategy, Flower's included,
sees decoded models, and reply checks judge what the strategy will aggregate.

Error feedback (`compression.error_feedback`, Seide et al. 2014; Karimireddy et al. 2019) keeps on each client
the part of its update the codec lost, e = (Δ + e) − decode(encode(Δ + e)), and adds it to the next update. It
lives in the node's `context.state`, which checkpoints already save.

The frame: `MAGIC`, the codec's name (one length byte, then ASCII), the CRC-32 of the body, the body.
"""

from __future__ import annotations

import copy
import struct
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MessageType, RecordDict

from ..build import locate
from ..node_config import partition_id
from ..protocol.arrays import as_numpy
from ..protocol.experiment import experiment_from_record
from ..protocol.keys import ARRAYS_RECORD, COMPRESSED_PAYLOAD, COMPRESSED_RECORD, CONFIG_RECORD, ROUND_KEY
from .base import Compressor, CorruptPayload, Shapes

MAGIC = b"FSC1"
PAYLOAD_STYPE = "fedsim.compressed"
RESIDUAL_STATE = "fedsim-compression-residual"  # the error-feedback memory in a node's context.state
SETTINGS = ("_target_", "name", "error_feedback")  # a `compression` entry's keys that are not codec arguments
_RNG_TAG = 0x636F6D70  # "comp": the codec's random stream, apart from every other draw of the seed


def compressor_from(experiment: Mapping[str, Any]) -> Compressor | None:
    """The configured compressor (`compression._target_`), or None when updates travel uncompressed."""
    entry = experiment.get("compression") or {}
    target = entry.get("_target_")
    if not target:
        return None
    cls = locate(str(target))
    compressor = cls(**{key: value for key, value in entry.items() if key not in SETTINGS})
    return compressor if compressor.active else None


def error_feedback(experiment: Mapping[str, Any]) -> bool:
    return bool((experiment.get("compression") or {}).get("error_feedback", False))


def update_names(sent: ArrayRecord, trained: ArrayRecord) -> list[str]:
    """The arrays a reply's update covers, in the order sent: float arrays the server sent and the client returned
    with the same shape and dtype. The decoder recomputes the same list from what it sent and what came back raw."""
    return [name for name, array in sent.items()
            if name in trained and _is_float(array) and array.shape == trained[name].shape
            and array.dtype == trained[name].dtype]


def _is_float(array: Array) -> bool:
    return np.dtype(array.dtype).kind == "f" if array.stype == "numpy.ndarray" else False


def compress_reply(sent: Message, reply: Message, context: Context) -> Message:
    """`reply` with its update encoded by the experiment's compressor (unchanged without one, or for anything but a
    train reply carrying arrays)."""
    if (reply.has_error() or sent.metadata.message_type != MessageType.TRAIN or ARRAYS_RECORD not in reply.content
            or ARRAYS_RECORD not in sent.content or CONFIG_RECORD not in sent.content):
        return reply
    experiment = experiment_from_record(sent.content[CONFIG_RECORD])
    compressor = compressor_from(experiment)
    if compressor is None:
        return reply
    received, trained = sent.content[ARRAYS_RECORD], reply.content[ARRAYS_RECORD]
    names = update_names(received, trained)
    update = {name: np.subtract(_values(trained[name]), _values(received[name]), dtype=np.float32) for name in names}
    server_round = int(sent.content[CONFIG_RECORD].get(ROUND_KEY, 0))
    rng = np.random.default_rng([int(experiment["seed"]), server_round, partition_id(context), _RNG_TAG])
    if error_feedback(experiment):
        update = _with_memory(update, context.state)
    body = compressor.encode(update, rng)
    if error_feedback(experiment):
        decoded = compressor.decode(body, {name: array.shape for name, array in update.items()})
        context.state[RESIDUAL_STATE] = ArrayRecord({name: Array(update[name] - decoded[name]) for name in update})
    content = RecordDict({key: record for key, record in reply.content.items() if key != ARRAYS_RECORD})
    raw = {name: array for name, array in trained.items() if name not in names}
    if raw:  # (no empty record: a SuperLink would skip the one it already holds, and the wire would differ)
        content[ARRAYS_RECORD] = ArrayRecord(raw)
    frame = frame_payload(compressor.name, body)
    content[COMPRESSED_RECORD] = ArrayRecord({COMPRESSED_PAYLOAD: Array(
        dtype="uint8", shape=(len(frame),), stype=PAYLOAD_STYPE, data=frame)})
    return Message(content=content, metadata=copy.deepcopy(reply.metadata))


def _values(array: Array) -> np.ndarray:
    """An array's values, read only (no copy of the buffer where it can be avoided)."""
    return as_numpy(array, copy=False)


def _with_memory(update: dict[str, np.ndarray], state: RecordDict) -> dict[str, np.ndarray]:
    """The update plus the residual error feedback kept from this client's last compressed update."""
    memory = state.get(RESIDUAL_STATE)
    if not isinstance(memory, ArrayRecord):
        return update
    return {name: value + _values(memory[name]) if name in memory and tuple(memory[name].shape) == value.shape
            else value for name, value in update.items()}


def frame_payload(name: str, body: bytes) -> bytes:
    encoded = name.encode("ascii")
    return MAGIC + bytes([len(encoded)]) + encoded + struct.pack("<I", zlib.crc32(body)) + body


def unframe_payload(frame: bytes, expected_name: str) -> bytes:
    """The body of a framed payload from codec `expected_name`; `CorruptPayload` for any other frame."""
    if frame[:len(MAGIC)] != MAGIC:
        raise CorruptPayload("the payload does not start with fedsim's compression frame")
    start = len(MAGIC) + 1
    length = frame[len(MAGIC)] if len(frame) >= start else 0
    header_end = start + length + 4
    if len(frame) < header_end:
        raise CorruptPayload("the payload's frame is truncated")
    name = frame[start:start + length]
    if name != expected_name.encode("ascii"):
        raise CorruptPayload(f"the payload names codec {name[:32]!r}, the experiment's is {expected_name!r}")
    (checksum,) = struct.unpack("<I", frame[start + length:header_end])
    body = frame[header_end:]
    if zlib.crc32(body) != checksum:
        raise CorruptPayload("the payload's checksum does not match its body")
    return body


def is_compressed(reply: Message) -> bool:
    return not reply.has_error() and COMPRESSED_RECORD in reply.content


def decompress_reply(reply: Message, sent: Message | None, compressor: Compressor | None) -> Message:
    """The reply as the client trained it: `w_global + decode(payload)` for each update array, under `arrays`.
    A reply without a payload is returned as it is; a payload the server cannot decode raises `CorruptPayload`."""
    if not is_compressed(reply):
        return reply
    if compressor is None:
        raise CorruptPayload("the reply carries a compressed update, and the experiment compresses none")
    if sent is None or ARRAYS_RECORD not in sent.content:
        raise CorruptPayload("the reply carries a compressed update, and answers no message that sent a model")
    record = reply.content[COMPRESSED_RECORD]
    if not isinstance(record, ArrayRecord) or list(record.keys()) != [COMPRESSED_PAYLOAD]:
        raise CorruptPayload(f"the compressed record holds {list(record.keys())[:4]}, not one '{COMPRESSED_PAYLOAD}'")
    payload = record[COMPRESSED_PAYLOAD]
    if payload.stype != PAYLOAD_STYPE or payload.dtype != "uint8":
        raise CorruptPayload(f"the payload is stype {payload.stype!r} dtype {payload.dtype!r}, not a fedsim payload")
    raw = reply.content.get(ARRAYS_RECORD)
    raw = raw if isinstance(raw, ArrayRecord) else ArrayRecord()
    base = sent.content[ARRAYS_RECORD]
    names = [name for name, array in base.items() if _is_float(array) and name not in raw]
    like: Shapes = {name: tuple(base[name].shape) for name in names}
    decoded = compressor.decode(unframe_payload(bytes(payload.data), compressor.name), like)
    if list(decoded) != names or any(decoded[n].shape != like[n] for n in names):
        raise CorruptPayload("the decoded update does not hold the arrays the server sent")
    arrays: dict[str, Array] = {}
    for name, array in base.items():
        if name in decoded:
            start = _values(array)
            arrays[name] = Array(np.add(start, decoded[name], dtype=np.float32).astype(start.dtype, copy=False))
        elif name in raw:
            arrays[name] = raw[name]
    arrays.update({name: array for name, array in raw.items() if name not in arrays})
    content = RecordDict({key: value for key, value in reply.content.items()
                          if key not in (ARRAYS_RECORD, COMPRESSED_RECORD)})
    content[ARRAYS_RECORD] = ArrayRecord(arrays)
    return Message(content=content, metadata=copy.deepcopy(reply.metadata))
