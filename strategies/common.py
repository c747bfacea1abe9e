"""Helpers shared by fedsim's strategies: reading replies, weighted averaging, per-node message configs."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict


def single_array_record(content: RecordDict) -> ArrayRecord:
    return next(iter(content.array_records.values()))


def single_metric(content: RecordDict, key: str) -> float:
    return float(next(iter(content.metric_records.values()))[key])


def weighted_average(contents: Sequence[RecordDict], weights: Sequence[float],
                     keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Sum_k weights[k] * arrays_k, accumulated in float64 and cast back to each array's dtype.

    The weights are used as given (no normalisation), so FedLAW's shrinking factor can enter through them.
    `keys` restricts the average to some arrays (e.g. parameters but not buffers).
    """
    records = [single_array_record(content) for content in contents]
    names = list(records[0].keys()) if keys is None else list(keys)
    averaged: dict[str, np.ndarray] = {}
    for name in names:
        first = records[0][name].numpy()
        total = np.zeros(first.shape, dtype=np.float64)
        for record, weight in zip(records, weights, strict=True):
            total += float(weight) * record[name].numpy().astype(np.float64)
        averaged[name] = (total.astype(first.dtype) if np.issubdtype(first.dtype, np.floating)
                          else np.rint(total).astype(first.dtype))
    return averaged


def to_array_record(arrays: dict[str, np.ndarray], order: Iterable[str]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.ascontiguousarray(arrays[name])) for name in order})


def with_config(message: Message, **updates: object) -> Message:
    """A copy of a train/evaluate instruction whose ConfigRecord has extra keys for this node only.

    Flower's FedAvg sends one shared RecordDict to every node; per-node settings need their own copy of the config
    (the arrays are shared, not copied).
    """
    content = message.content
    config = ConfigRecord({**dict(content["config"]), **updates})
    records = {name: record for name, record in content.items() if name != "config"}
    return Message(
        RecordDict({**records, "config": config}),
        dst_node_id=message.metadata.dst_node_id,
        message_type=message.metadata.message_type,
    )
