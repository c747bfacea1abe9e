"""Server-side checks on client replies, before any strategy sees them.

A client can send garbage: NaN weights after a diverged step, arrays of the wrong shape from another model, a
missing or absurd `num-examples`, an update far larger than any honest one. Flower's strategies would crash on
some of these (inconsistent replies) and silently average the rest into the global model. `FedsimGrid` runs every
train and evaluate reply through `check_reply` (`fedsim.grid.filtering`); a reply with a problem is replaced by an
error reply that names it, which every Flower strategy already skips. So one seam covers every strategy, fedsim's
and Flower's.

The update-norm bound is relative by default (`server.max_update_norm: auto`): an honest update's size depends on
the model, the data, the learning rate and the round, so no absolute number fits every run, but within one round
honest clients move the model by comparable amounts. A reply far above the median of the others is a scaled (or
broken) update. `outsized_updates` compares each norm with the median of the *other* replies of the batch, so that
with two replies an attacker cannot set its own reference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, MessageType, RecordDict

from .protocol.arrays import as_numpy
from .protocol.keys import NUM_EXAMPLES

# Far above any real partition; the cap when the server does not know a client's data size (deployment).
UNKNOWN_SIZE_CAP = 10**9
AUTO = "auto"
# `server.update_norm_factor`'s default: about 7 times the largest ratio (update norm / median of the others') that
# an honest reply reached, 14.5, over ~100,000 replies of the test suite, the reproductions, bench/reliability.py
# and runs with quantity skew, stragglers, FedProx and q-FFL; a x1000 update exceeds it unless the attacker's own
# update is under a tenth of the median (a tiny client, with little weight in the average).
DEFAULT_UPDATE_NORM_FACTOR = 100.0


@dataclass(frozen=True)
class ReplyLimits:
    """What a reply may carry: `max_update_norm` bounds ||w_k - w_global||_2 (None: no absolute bound);
    `update_norm_factor` bounds it relative to the batch (None: no relative bound; see `outsized_updates`);
    `client_sizes` are the training-set sizes the server knows, by partition id, and bound `num-examples`; fewer than
    `min_valid_replies` valid training replies skip the round."""

    max_update_norm: float | None = None
    min_valid_replies: int = 1
    client_sizes: Mapping[int, int] = field(default_factory=dict)
    update_norm_factor: float | None = None

    @classmethod
    def from_experiment(cls, experiment: Mapping[str, Any],
                        client_sizes: Mapping[int, int] | None = None) -> ReplyLimits:
        """The config's limits: `server.max_update_norm` = auto (the default: relative bound), a number (absolute
        bound) or null (none)."""
        server = experiment.get("server", {})
        bound = server.get("max_update_norm", AUTO)
        factor = float(server.get("update_norm_factor", DEFAULT_UPDATE_NORM_FACTOR)) if bound == AUTO else None
        absolute = None if bound is None or bound == AUTO else float(bound)
        return cls(absolute, int(server.get("min_valid_replies", 1)), dict(client_sizes or {}), factor)

    @property
    def measures_norms(self) -> bool:
        return self.max_update_norm is not None or self.update_norm_factor is not None


def reply_kind(reply: Message) -> str:
    """A message's type without its action suffix: `MessageType.TRAIN`, `EVALUATE` or `QUERY`."""
    return reply.metadata.message_type.split(".")[0]


def reply_problem(reply: Message, sent: Message | None, limits: ReplyLimits, partition: int) -> str | None:
    """Why `reply` (to `sent`) must not reach the strategy, or None if it may. Never raises."""
    return check_reply(reply, sent, limits, partition)[0]


def check_reply(reply: Message, sent: Message | None, limits: ReplyLimits, partition: int,
                references: dict[int, np.ndarray] | None = None) -> tuple[str | None, float | None]:
    """(problem or None, update norm ||w_k - w_global||_2): the norm of a valid training reply when `limits` bound
    norms, else None. `references` caches the sent arrays' values across the replies of a batch (they usually
    share one ArrayRecord). Never raises."""
    try:
        return _problem(reply, sent, limits, partition, {} if references is None else references)
    except Exception as error:  # pylint: disable=broad-exception-caught  # an unreadable reply is a bad reply
        return f"unreadable reply ({type(error).__name__}: {error})", None


def _problem(reply: Message, sent: Message | None, limits: ReplyLimits, partition: int,
             references: dict[int, np.ndarray]) -> tuple[str | None, float | None]:
    if reply.has_error() or not reply.has_content():
        return (None if reply.has_error() else "no content"), None
    kind = reply_kind(reply)
    if kind not in (MessageType.TRAIN, MessageType.EVALUATE):
        return None, None
    content = reply.content
    problem = _metrics_problem(content, limits.client_sizes.get(partition, UNKNOWN_SIZE_CAP))
    if problem or kind != MessageType.TRAIN or sent is None:
        return problem, None
    problem, norm = _arrays_problem(content, sent.content, limits.measures_norms, references)
    if problem is None and norm is not None and limits.max_update_norm is not None and norm > limits.max_update_norm:
        problem = f"update norm {norm:.4g} > server.max_update_norm = {limits.max_update_norm:g}"
    return problem, norm


def _metrics_problem(content: RecordDict, size_cap: int) -> str | None:
    records = list(content.metric_records.values())
    if not records:
        return "no MetricRecord"
    counts = [record[NUM_EXAMPLES] for record in records if NUM_EXAMPLES in record]
    if not counts:
        return f"no '{NUM_EXAMPLES}' in its metrics"
    for count in counts:
        if isinstance(count, bool) or not isinstance(count, (int, float)) or not math.isfinite(count):
            return f"'{NUM_EXAMPLES}' is {count!r}, not a number"
        if count < 1 or count != int(count) or count > size_cap:
            return f"'{NUM_EXAMPLES}' = {count!r}: outside 1..{size_cap}"
    for record in records:
        for key, value in record.items():
            values = value if isinstance(value, list) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                return f"metric '{key}' is not finite ({value!r})"
    return None


def _arrays_problem(content: RecordDict, sent: RecordDict, measure: bool,
                    references: dict[int, np.ndarray]) -> tuple[str | None, float | None]:
    """(problem, update norm if `measure`); the norm in the arrays' own precision, summed in a Python float."""
    expected, got = sent.array_records, content.array_records
    if sorted(got) != sorted(expected):
        return f"ArrayRecords {sorted(got)}, expected {sorted(expected)}", None
    squared = 0.0
    for name, record in got.items():
        reference: ArrayRecord = expected[name]
        if list(record.keys()) != list(reference.keys()):
            missing, extra = set(reference) - set(record), set(record) - set(reference)
            return (f"array keys differ from the model's (missing {sorted(missing)[:3]}, "
                    f"extra {sorted(extra)[:3]})"), None
        for key, array in record.items():
            model_array = reference[key]
            if tuple(array.shape) != tuple(model_array.shape) or array.dtype != model_array.dtype:
                return (f"'{key}' is {array.dtype}{list(array.shape)}, "
                        f"the model's is {model_array.dtype}{list(model_array.shape)}"), None
            values = as_numpy(array)
            if values.shape != tuple(model_array.shape):
                return f"'{key}' holds {values.size} values, its shape says {list(array.shape)}", None
            if np.issubdtype(values.dtype, np.inexact):
                if not np.isfinite(values).all():
                    return f"'{key}' has NaN or Inf values", None
                if measure:
                    if id(model_array) not in references:
                        references[id(model_array)] = as_numpy(model_array)
                    step = (values - references[id(model_array)]).ravel()
                    if step.dtype == np.float16:  # its squares overflow from a norm of 256 on
                        step = step.astype(np.float32)
                    squared += float(np.vdot(step, step).real)
    return None, math.sqrt(squared) if measure else None


def outsized_updates(norms: Sequence[float], factor: float) -> list[str | None]:
    """For each update norm of one batch of training replies, why it is too large, or None.

    A norm is too large when it exceeds `factor` times the median of the *other* norms (leave-one-out). With fewer
    than two norms, or a median of 0, there is nothing to compare with and every norm passes. O(n log n): the
    leave-one-out median is read off the sorted norms, since 1000-client rounds come through here.
    """
    count = len(norms)
    if count < 2:
        return [None] * count
    order = sorted(range(count), key=lambda i: norms[i])
    ranked = [norms[i] for i in order]
    others = count - 1
    verdicts: list[str | None] = [None] * count
    middle = others // 2
    for rank, index in enumerate(order):
        median = _kth_without(ranked, rank, middle)
        if others % 2 == 0:
            median = (_kth_without(ranked, rank, middle - 1) + median) / 2
        if median > 0 and norms[index] > factor * median:
            verdicts[index] = f"update norm {norms[index]:.3g} > {factor:g} × the round's median ({median:.3g})"
    return verdicts


def _kth_without(ranked: list[float], rank: int, k: int) -> float:
    """The k-th smallest of the sorted `ranked` once the one at `rank` is left out."""
    return ranked[k] if k < rank else ranked[k + 1]
