"""`WeightedAggregation`: the one base of fedsim's strategies. A round's aggregation is check -> weights -> average
-> report, written once here; a strategy implements the step it changes.

- `aggregation_weights` (the hook): one weight per valid reply. The default is FedAvg's n_k / n; FedDisco, FairFed
  and FedCE compute their own, q-FFL its effective step weights, FedLAW learns them.
- `average`: the new global model from the replies and the weights. The default is sum_k p_k w_k accumulated in
  float64; FedAvg keeps Flower's own arithmetic, FedCE steps theta + sum_k p_k Delta_k, q-FFL takes its
  Delta/h step, FedLAW scales by its learned gamma.
- the report: `client_weights` (node id -> weight) and `round_scalars`, which fedsim's ServerApp records each round
  (`fedsim.protocol.capabilities.ReportsRound`).

Every strategy on this base supports FedProx's stragglers (`fedsim.strategies.stragglers`) through its constructor,
and declares what fedsim's configuration and ClientApp read (`fedsim.protocol.capabilities.strategy_traits`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from logging import INFO
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg
from flwr.supercore import log

from fedsim.protocol.constraints import Interval, Options
from fedsim.protocol.requests import ClientRequest

from .common import single_array_record, single_metric, to_array_record, weighted_average, with_config
from .stragglers import STRAGGLER_MODES, apply_stragglers

FRACTION = [Interval(Real, 0, 1, closed="both")]
COUNT = [Interval(Integral, 0, None, closed="left")]


class WeightedAggregation(FlowerFedAvg):
    """Flower's message-based FedAvg with fedsim's aggregation sequence, stragglers and round report.

    Parameters (beyond Flower's FedAvg)
    ----------
    stragglers_fraction : float in [0, 1)
        Share of each round's sampled clients that straggle (the FedProx paper uses 0, 0.5, 0.9).
    local_epochs : int
        E, the clients' full local work; stragglers under `partial` mode draw from 1..E-1.
    straggler_mode : "drop" | "partial"
        Stragglers get no instruction and are not averaged (`drop`), or train fewer epochs and are (`partial`).
    seed : int
        Seeds the straggler choice together with the round, so every strategy sees the same stragglers.
    """

    supports_stragglers: ClassVar[bool] = True
    client_requests: ClassVar[tuple[ClientRequest, ...]] = ()
    _parameter_constraints: ClassVar[dict[str, list]] = {
        "fraction_train": FRACTION,
        "fraction_evaluate": FRACTION,
        "min_train_nodes": COUNT,
        "min_evaluate_nodes": COUNT,
        "min_available_nodes": COUNT,
        "stragglers_fraction": [Interval(Real, 0, 1, closed="left")],
        "straggler_mode": [Options(STRAGGLER_MODES)],
        "local_epochs": [Interval(Integral, 1, None, closed="left")],
        "seed": COUNT,
    }

    def __init__(self, *, stragglers_fraction: float = 0.0, local_epochs: int = 1, straggler_mode: str = "drop",
                 seed: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= stragglers_fraction < 1.0:
            raise ValueError(f"stragglers_fraction={stragglers_fraction!r}: must be in [0, 1)")
        if straggler_mode not in STRAGGLER_MODES:
            raise ValueError(f"straggler_mode={straggler_mode!r}: one of {', '.join(STRAGGLER_MODES)}")
        if local_epochs < 1:
            raise ValueError(f"local_epochs={local_epochs!r}: must be >= 1")
        self.stragglers_fraction, self.local_epochs, self.straggler_mode = (stragglers_fraction, local_epochs,
                                                                            straggler_mode)
        self.seed = seed
        self.current_arrays: ArrayRecord | None = None  # the round's global model, as sent
        self.reset_report()

    def reset_report(self) -> None:
        self.client_weights: dict[int, float] = {}
        self.round_scalars: dict[str, float] = {}

    def summary(self) -> None:
        log(INFO, "\t├──> Stragglers: fraction %s, mode %s, E = %s", self.stragglers_fraction, self.straggler_mode,
            self.local_epochs)
        super().summary()

    # --- configure: shared keys, sampling, stragglers, per-node keys ---------------------------------------------
    def train_config(self, config: ConfigRecord) -> ConfigRecord:
        """The train ConfigRecord every sampled node gets (a strategy adds the keys its clients read)."""
        return config

    def node_config(self, node_id: int) -> dict[str, Any]:
        """Keys for one node's train instruction only (FedDisco's histogram request, FedCE's coefficient)."""
        return {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Flower's sampling, minus dropped stragglers or with stragglers' shorter local work, plus per-node keys."""
        self.reset_report()
        self.current_arrays = arrays
        messages = list(super().configure_train(server_round, arrays, self.train_config(config), grid))
        kept, count = apply_stragglers(
            messages, self.straggler_mode, self.stragglers_fraction, self.local_epochs, self.seed, server_round
        )
        self.round_scalars["stragglers"] = float(count)
        return [self._with_node_config(message) for message in kept]

    def _with_node_config(self, message: Message) -> Message:
        updates = self.node_config(message.metadata.dst_node_id)
        return with_config(message, **updates) if updates else message

    # --- aggregate: check -> weights -> average -> report ----------------------------------------------------
    def aggregation_weights(self, server_round: int, replies: Sequence[Message]) -> Sequence[float]:
        """p_k = n_k / sum_j n_j over the valid replies (Python floats: Flower's arithmetic)."""
        sizes = [single_metric(reply.content, self.weighted_by_key) for reply in replies]
        total = sum(sizes)
        return [size / total for size in sizes]

    def average(self, server_round: int, replies: Sequence[Message], weights: Sequence[float]) -> ArrayRecord:
        """sum_k p_k w_k, accumulated in float64 and cast back to each array's dtype."""
        contents = [reply.content for reply in replies]
        return to_array_record(weighted_average(contents, weights), single_array_record(contents[0]).keys())

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's reply checks, then the weights, the average and the report; nothing when no reply is valid."""
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        weights = self.aggregation_weights(server_round, valid)
        arrays = self.average(server_round, valid, weights)
        self.client_weights = {reply.metadata.src_node_id: float(w) for reply, w in zip(valid, weights, strict=True)}
        return arrays, self.train_metrics_aggr_fn([reply.content for reply in valid], self.weighted_by_key)


def flower_average(replies: Sequence[Message], weights: Sequence[float]) -> ArrayRecord:
    """sum_k p_k w_k with Flower's FedAvg arithmetic: each array times a Python float, summed in its own dtype."""
    total: dict[str, np.ndarray] = {}
    for reply, weight in zip(replies, weights, strict=True):
        for name, array in single_array_record(reply.content).items():
            if name in total:
                total[name] += array.numpy() * float(weight)
            else:
                total[name] = array.numpy() * float(weight)
    return to_array_record({name: np.asarray(value) for name, value in total.items()}, total.keys())
