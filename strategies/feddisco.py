"""FedDisco (Ye, Xu, Wang, Chen, Wang, ICML 2023): discrepancy-aware aggregation weights.

Reference: `MediaBrain-SJTU/FedDisco` (`disco.py`: get_distribution_difference, disco_weight_adjusting).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from logging import INFO
from numbers import Real
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.supercore import log

from fedsim.protocol.constraints import Interval, Options
from fedsim.protocol.keys import NUM_EXAMPLES
from fedsim.protocol.requests import ClientRequest, LocalRound

from .base import WeightedAggregation
from .common import single_metric
from .fedprox import FedProx

# Train ConfigRecord flag asking a client for its label histogram, and the reply record that carries it.
HISTOGRAM_REQUEST_KEY = "label-histogram"
HISTOGRAM_RECORD = "label-histogram"
HISTOGRAM_COUNTS = "counts"

MEASURES = ("kl", "l2", "l1", "cosine")
TARGETS = ("uniform", "clients")


def discrepancy(counts: Sequence[float], target: Sequence[float], measure: str = "kl") -> float:
    """d_k between the client's label distribution D_k = c_k / sum(c_k) and the target distribution T.

    `kl` is sum_c kl_div(D_k, T) = KL(D_k || T) (scipy's elementwise kl_div, as the reference); `l2` and `l1` are
    norms of D_k - T; `cosine` is 1 - cos(D_k, T).
    """
    local = np.asarray(counts, dtype=np.float64)
    local = local / local.sum()
    goal = np.asarray(target, dtype=np.float64)
    if measure == "kl":
        from scipy.special import (
            kl_div,  # imported here: the ClientApp imports this module for its client half, and stays light
        )

        return float(np.sum(kl_div(local, goal)))
    if measure == "l2":
        return float(np.linalg.norm(local - goal))
    if measure == "l1":
        return float(np.abs(local - goal).sum())
    if measure == "cosine":
        return float(1.0 - local @ goal / (np.linalg.norm(local) * np.linalg.norm(goal)))
    raise ValueError(f"measure={measure!r}: one of {', '.join(MEASURES)}")


def disco_weights(num_examples: Sequence[float], discrepancies: Sequence[float], a: float, b: float,
                  measure: str = "kl") -> np.ndarray:
    """p_k = ReLU(n_k - a d_k + b) / sum_j ReLU(n_j - a d_j + b), with n_k = N_k / sum_j N_j over this round.

    With `kl` the discrepancies are first divided by their sum over the round's clients (all zeros if that sum is
    0), as the reference does; the other measures are used as they are. If every term is <= 0 the reference
    crashes (`new_weight` undefined); here the weights fall back to n_k.
    """
    sizes = np.asarray(num_examples, dtype=np.float64)
    n = sizes / sizes.sum()
    d = np.asarray(discrepancies, dtype=np.float64)
    if measure == "kl":
        total = d.sum()
        d = d / total if total > 0 else np.zeros_like(d)
    raw = np.maximum(n - a * d + b, 0.0)
    return raw / raw.sum() if raw.sum() > 0 else n


def histogram_reply(counts: Mapping[int, int] | Sequence[int]) -> ConfigRecord:
    """The record a client attaches to its train reply when asked for its label histogram."""
    values = [int(v) for v in (counts.values() if isinstance(counts, Mapping) else counts)]
    return ConfigRecord({HISTOGRAM_COUNTS: values})


def answer_histogram_request(local: LocalRound, trained: ArrayRecord, reply: RecordDict) -> None:
    """The client half: attach the training-label counts c_k to the reply."""
    reply[HISTOGRAM_RECORD] = histogram_reply(local.label_counts())


class FedDisco(FedProx):
    """FedAvg (or FedProx, with `proximal_mu > 0`) whose aggregation weights account for label skew.

    What crosses the wire: once per client (the first round it trains), the train instruction carries
    `label-histogram: True` and the client adds its training-label counts c_k in a ConfigRecord `label-histogram`
    (`counts`; the client half is `histogram_request`). Every round clients send their weights and `num-examples`,
    as in FedAvg. The server computes d_k = discrepancy(c_k, T) with T the uniform distribution
    (`target="uniform"`, the reference default) or the aggregate of the reported histograms (`target="clients"`,
    sum_k c_k / sum_k n_k, the paper's alternative), and aggregates w = sum_k p_k w_k with p_k from
    `disco_weights`, accumulated in float64.

    Parameters (beyond FedProx's)
    ----------
    a : float, default 0.5
        Weight of the discrepancy.
    b : float, default 0.1
        Offset that keeps clients with large discrepancy in the average.
    measure : "kl" (default) | "l2" | "l1" | "cosine"
    target : "uniform" (default) | "clients"
    proximal_mu : float, default 0
        > 0 gives FedDisco over FedProx clients (the paper's "modular" use).
    straggler_mode : "drop" (default) | "partial"
    """

    client_requests = (ClientRequest(HISTOGRAM_REQUEST_KEY, after=answer_histogram_request),)
    _parameter_constraints = {
        "a": [Interval(Real, 0, None, closed="left")],
        "b": [Real],
        "measure": [Options(MEASURES)],
        "target": [Options(TARGETS)],
    }

    def __init__(
        self,
        *,
        a: float = 0.5,
        b: float = 0.1,
        measure: str = "kl",
        target: str = "uniform",
        proximal_mu: float = 0.0,
        straggler_mode: str = "drop",
        **kwargs: Any,
    ) -> None:
        if measure not in MEASURES:
            raise ValueError(f"measure={measure!r}: one of {', '.join(MEASURES)}")
        if target not in TARGETS:
            raise ValueError(f"target={target!r}: one of {', '.join(TARGETS)}")
        super().__init__(proximal_mu=proximal_mu, straggler_mode=straggler_mode, **kwargs)
        self.a, self.b, self.measure, self.target = a, b, measure, target
        self.histograms: dict[int, np.ndarray] = {}

    def summary(self) -> None:
        log(INFO, "\t├──> FedDisco: a=%s, b=%s, measure=%s, target=%s", self.a, self.b, self.measure, self.target)
        super().summary()

    def node_config(self, node_id: int) -> dict[str, Any]:
        return {} if node_id in self.histograms else {HISTOGRAM_REQUEST_KEY: True}

    def target_distribution(self, num_classes: int) -> np.ndarray:
        if self.target == "uniform":
            return np.full(num_classes, 1.0 / num_classes)
        pooled = np.sum(list(self.histograms.values()), axis=0).astype(np.float64)
        return pooled / pooled.sum()

    def _remember_histograms(self, replies: Sequence[Message]) -> None:
        for reply in replies:
            record = reply.content.config_records.get(HISTOGRAM_RECORD)
            if record is not None:
                self.histograms[reply.metadata.src_node_id] = np.asarray(record[HISTOGRAM_COUNTS], dtype=np.float64)

    def aggregation_weights(self, server_round: int, replies: Sequence[Message]) -> np.ndarray:
        self._remember_histograms(replies)
        return self.discrepancy_weights([reply.metadata.src_node_id for reply in replies],
                                        [single_metric(reply.content, NUM_EXAMPLES) for reply in replies])

    def discrepancy_weights(self, node_ids: Sequence[int], num_examples: Sequence[float]) -> np.ndarray:
        """p_k of `disco_weights` for these nodes, from the histograms they reported."""
        missing = [node for node in node_ids if node not in self.histograms]
        if missing:
            raise ValueError(f"FedDisco has no label histogram from node(s) {missing}: "
                             f"clients must answer '{HISTOGRAM_REQUEST_KEY}'")
        num_classes = max(len(self.histograms[node]) for node in node_ids)
        target = self.target_distribution(num_classes)
        d = [discrepancy(_padded(self.histograms[node], num_classes), target, self.measure) for node in node_ids]
        return disco_weights(num_examples, d, self.a, self.b, self.measure)

    average = WeightedAggregation.average  # float64 accumulation, not FedAvg's Flower arithmetic


def _padded(counts: np.ndarray, size: int) -> np.ndarray:
    return np.pad(counts, (0, size - len(counts))) if len(counts) < size else counts
