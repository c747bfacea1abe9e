"""What fedsim's asynchronous strategies share (FedAsync, FedBuff): `AsynchronousAggregation`, their base on
`WeightedAggregation` (the declarations, the train config of a starting client, the row report), and the reading of
a reply's arrays against the models it must match. The loop that calls them is `fedsim.async_rounds`; the protocol
they implement is `fedsim.protocol.asynchronous`.
"""

from __future__ import annotations

from numbers import Integral
from typing import Any, ClassVar

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message

from fedsim.protocol.arrays import as_numpy
from fedsim.protocol.asynchronous import MODEL_VERSION_KEY
from fedsim.protocol.constraints import Interval, check_parameters, parameter_constraints

from .base import WeightedAggregation

CONCURRENCY = [Interval(Integral, 1, None, closed="left")]


def reply_arrays(reply: Message, *models: ArrayRecord) -> dict[str, np.ndarray] | None:
    """The arrays of a train reply when they match every one of `models` (names and shapes), else None."""
    if reply.has_error() or not reply.has_content() or not reply.content.array_records:
        return None
    record = next(iter(reply.content.array_records.values()))
    if any(set(record.keys()) != set(model.keys()) for model in models):
        return None
    arrays = {name: as_numpy(record[name]) for name in record.keys()}
    if any(arrays[name].shape != tuple(model[name].shape) for model in models for name in arrays):
        return None
    return arrays


def is_float(array: np.ndarray) -> bool:
    return bool(np.issubdtype(array.dtype, np.floating))


def running_mean(scalars: dict[str, float], name: str, value: float, count: int) -> None:
    """Update the mean `scalars[name]` of `count - 1` values with the `count`-th, `value`."""
    previous = scalars.get(name, 0.0)
    scalars[name] = previous + (float(value) - previous) / count


class AsynchronousAggregation(WeightedAggregation):
    """What FedAsync and FedBuff share: the declarations, the train config of a starting client, the checks."""

    asynchronous: ClassVar[bool] = True
    supports_stragglers: ClassVar[bool] = False  # the asynchronous loop has no synchronous stragglers

    def __init__(self, *, concurrency: int = 10, **kwargs: Any) -> None:
        if kwargs.get("stragglers_fraction", 0.0):
            raise ValueError(f"stragglers_fraction={kwargs['stragglers_fraction']!r}: an asynchronous strategy has "
                             "no synchronous stragglers (0 only)")
        self.concurrency = concurrency
        super().__init__(**kwargs)

    @classmethod
    def _check(cls, **arguments: Any) -> None:
        """The declared constraints, also when the class is built without fedsim's config validation."""
        check_parameters(parameter_constraints(cls), arguments)

    def configure_update(self, version: int, arrays: ArrayRecord, config: ConfigRecord) -> ConfigRecord:
        """The synchronous train config (`train_config`) plus the version the client starts from."""
        return ConfigRecord({**dict(self.train_config(config)), MODEL_VERSION_KEY: int(version)})

    def reset_report(self) -> None:
        """A new metrics row: the core records one every `concurrency` updates, then calls this."""
        super().reset_report()
        self.row_updates = 0  # updates applied (FedAsync) or buffered (FedBuff) since the last row
        self.round_scalars["updates_refused"] = 0.0

    def _refuse(self) -> None:
        self.round_scalars["updates_refused"] = self.round_scalars.get("updates_refused", 0.0) + 1.0

    def _count_update(self, reply: Message, weight: float) -> int:
        """Count an accepted update and its node's weight; returns how many this row has had."""
        self.row_updates += 1
        node = reply.metadata.src_node_id
        self.client_weights[node] = self.client_weights.get(node, 0.0) + float(weight)
        return self.row_updates
