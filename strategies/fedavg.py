"""FedAvg (McMahan et al., AISTATS 2017) with FedProx's systems-heterogeneity setting."""

from __future__ import annotations

from collections.abc import Sequence

from flwr.app import ArrayRecord, Message

from .base import WeightedAggregation, flower_average


class FedAvg(WeightedAggregation):
    """w = sum_k n_k w_k / sum_k n_k, plus stragglers (see `WeightedAggregation` for the parameters).

    With `stragglers_fraction = 0` (the default) this is Flower's message-based FedAvg bit for bit: the average uses
    Flower's arithmetic (`flower_average`). Otherwise that fraction of each round's sampled clients straggle; with
    `straggler_mode="drop"` (FedAvg in the FedProx paper's code) they get no training instruction and only the
    active clients are averaged.
    """

    def average(self, server_round: int, replies: Sequence[Message], weights: Sequence[float]) -> ArrayRecord:
        return flower_average(replies, weights)
