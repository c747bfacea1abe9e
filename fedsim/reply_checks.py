"""Server-side checks on client replies, before any strategy sees them.

A client can send garbage: NaN weights after a diverged step, arrays of the wrong shape from another model, a
missing or absurd `num-examples`, an update far larger than any honest one. Flower's strategies would crash on
some of these (inconsistent replies) and silently average the rest into the global model. `FedsimGrid` runs every
train and evaluate reply through `reply_problem`; a reply with a problem is replaced by an error reply that names
it, which every Flower strategy already skips. So one seam covers every strategy, fedsim's and Flower's.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Error, Message, MessageType, RecordDict


NUM_EXAMPLES_KEY = "num-examples"
REJECTED_PREFIX = "rejected by fedsim: "
SKIPPED_PREFIX = "round skipped by fedsim: "
# Far above any real partition; the cap when the server does not know a client's data size (deployment).
UNKNOWN_SIZE_CAP = 10**9


@dataclass(frozen=True)
class ReplyLimits:
    """What a reply may carry: `max_update_norm` bounds ||w_k - w_global||_2 (None: no bound); `client_sizes` are
    the training-set sizes the server knows, by partition id, and bound `num-examples`; fewer than
    `min_valid_replies` valid training replies skip the round."""

    max_update_norm: float | None = None
    min_valid_replies: int = 1
    client_sizes: Mapping[int, int] = field(default_factory=dict)

    @classmethod
    def from_experiment(cls, experiment: Mapping[str, Any], client_sizes: Mapping[int, int] | None = None) -> ReplyLimits:
        server = experiment.get("server", {})
        bound = server.get("max_update_norm")
        return cls(None if bound is None else float(bound), int(server.get("min_valid_replies", 1)), dict(client_sizes or {}))


def as_error(reply: Message, reason: str) -> Message:
    """An error reply with `reply`'s metadata (same sender, same message it answers): what the strategy sees in
    place of a rejected reply, or of a valid one in a round with too few valid replies."""
    return Message(error=Error(code=0, reason=reason), metadata=copy.deepcopy(reply.metadata))


def reply_problem(reply: Message, sent: Message | None, limits: ReplyLimits, partition: int) -> str | None:
    """Why `reply` (to `sent`) must not reach the strategy, or None if it may. Never raises."""
    try:
        return _problem(reply, sent, limits, partition)
    except Exception as error:  # pylint: disable=broad-exception-caught  # an unreadable reply is a bad reply
        return f"unreadable reply ({type(error).__name__}: {error})"


def _problem(reply: Message, sent: Message | None, limits: ReplyLimits, partition: int) -> str | None:
    if reply.has_error() or not reply.has_content():
        return None if reply.has_error() else "no content"
    kind = reply.metadata.message_type.split(".")[0]
    if kind not in (MessageType.TRAIN, MessageType.EVALUATE):
        return None
    content = reply.content
    problem = _metrics_problem(content, limits.client_sizes.get(partition, UNKNOWN_SIZE_CAP))
    if problem or kind != MessageType.TRAIN or sent is None:
        return problem
    return _arrays_problem(content, sent.content, limits.max_update_norm)


def _metrics_problem(content: RecordDict, size_cap: int) -> str | None:
    records = list(content.metric_records.values())
    if not records:
        return "no MetricRecord"
    counts = [record[NUM_EXAMPLES_KEY] for record in records if NUM_EXAMPLES_KEY in record]
    if not counts:
        return f"no '{NUM_EXAMPLES_KEY}' in its metrics"
    for count in counts:
        if isinstance(count, bool) or not isinstance(count, (int, float)) or not math.isfinite(count):
            return f"'{NUM_EXAMPLES_KEY}' is {count!r}, not a number"
        if count < 1 or count != int(count) or count > size_cap:
            return f"'{NUM_EXAMPLES_KEY}' = {count!r}: outside 1..{size_cap}"
    for record in records:
        for key, value in record.items():
            values = value if isinstance(value, list) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                return f"metric '{key}' is not finite ({value!r})"
    return None


def _arrays_problem(content: RecordDict, sent: RecordDict, max_update_norm: float | None) -> str | None:
    expected, got = sent.array_records, content.array_records
    if sorted(got) != sorted(expected):
        return f"ArrayRecords {sorted(got)}, expected {sorted(expected)}"
    squared = 0.0
    for name, record in got.items():
        reference: ArrayRecord = expected[name]
        if list(record.keys()) != list(reference.keys()):
            missing, extra = set(reference) - set(record), set(record) - set(reference)
            return f"array keys differ from the model's (missing {sorted(missing)[:3]}, extra {sorted(extra)[:3]})"
        for key, array in record.items():
            model_array = reference[key]
            if tuple(array.shape) != tuple(model_array.shape) or array.dtype != model_array.dtype:
                return f"'{key}' is {array.dtype}{list(array.shape)}, the model's is {model_array.dtype}{list(model_array.shape)}"
            values = array.numpy()
            if values.shape != tuple(model_array.shape):
                return f"'{key}' holds {values.size} values, its shape says {list(array.shape)}"
            if np.issubdtype(values.dtype, np.inexact):
                if not np.isfinite(values).all():
                    return f"'{key}' has NaN or Inf values"
                if max_update_norm is not None:
                    squared += float(np.sum((values.astype(np.float64) - model_array.numpy().astype(np.float64)) ** 2))
    if max_update_norm is not None and math.sqrt(squared) > max_update_norm:
        return f"update norm {math.sqrt(squared):.4g} > server.max_update_norm = {max_update_norm:g}"
    return None
