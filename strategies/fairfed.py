"""FairFed (Ezzeldin, Yan, He, Ferrara, Avestimehr, AAAI 2023): fairness-aware aggregation weights.

References read: the paper and the Inria declearn implementation (`declearn/fairness/fairfed`, the source of the
default beta = 1 and of the weights' scale); no official code.
"""

from __future__ import annotations

from collections.abc import Sequence
from logging import INFO
from numbers import Real
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message
from flwr.supercore import log

from fedsim.protocol.constraints import Interval, Options
from fedsim.protocol.group_counts import METRICS, GroupCounts, pooled
from fedsim.protocol.keys import NUM_EXAMPLES

from .base import WeightedAggregation
from .client_requests import PRETRAIN_EVAL_KEY, PRETRAIN_EVALUATION
from .common import single_metric


def fairness_gaps(counts: Sequence[GroupCounts], metric: str) -> np.ndarray:
    """Delta_k = |F_k - F_g| with F_g from the summed counts; a client whose local metric is undefined (it lacks a
    group, or for EOD a group with Y=1) gets the accuracy gap |Acc_k - Acc_g| instead."""
    everyone = pooled(counts)
    global_metric, global_accuracy = everyone.metric(metric), everyone.accuracy
    gaps = []
    for local in counts:
        value = local.metric(metric)
        gaps.append(abs(local.accuracy - global_accuracy) if np.isnan(value) else abs(value - global_metric))
    return np.asarray(gaps, dtype=np.float64)


def update_weights(previous: np.ndarray, gaps: np.ndarray, beta: float) -> np.ndarray:
    """omega_bar^t = max(omega_bar^{t-1} - beta (Delta_k - mean_j Delta_j), 0): the paper's and declearn's step,
    clipped at 0."""
    return np.maximum(previous - beta * (gaps - gaps.mean()), 0.0)


class FairFed(WeightedAggregation):
    """FedAvg whose aggregation weights move away from clients whose local fairness deviates from the global one.

    Each round, the train instruction carries `pretrain-eval`: a client evaluates the received global model w^t on
    its training data before training and adds its group counts (`fedsim.protocol.group_counts.GroupCounts`:
    examples and predicted positives per (A, Y) cell, correct predictions) to its reply. The server sums them to
    the global metric F_g (EOD or SPD) and accuracy Acc_g, computes each client's F_k and Acc_k, and

        Delta_k = |F_k - F_g|   (or |Acc_k - Acc_g| when the client lacks a group; for EOD a group with Y=1)
        omega_bar_k^0 = n_k,   omega_bar_k^t = omega_bar_k^{t-1} - beta (Delta_k - mean_j Delta_j)
        omega_k = omega_bar_k / sum_j omega_bar_j,   w^{t+1} = sum_k omega_k w_k^{t+1},

    with the mean over the round's clients. beta = 0 is FedAvg.

    Scale of beta: omega_bar starts at the raw sample count n_k, as in declearn (`FairfedAggregator`
    `initialize_local_weight(n_samples)`), so the default beta = 1 is declearn's beta = 1: each round moves a weight
    by at most 1 sample's worth, a gentle correction. The paper writes omega_bar^0 = n_k / n and renormalises every
    round; with every client present the updates sum to 0, so the paper's beta_p equals beta = beta_p * n here
    (n = the clients' total rows): pass beta = beta_p * n to run the paper's scale.

    Deviations: (1) the paper exchanges F_g, then the clients' Delta_k, then mean Delta through secure aggregation
    in extra message rounds; here the server computes F_g and every F_k from the clients' counts of one train
    round, which gives the same weights but lets the server see each client's counts. (2) omega_bar is clipped at 0
    (the paper and declearn leave it unconstrained; a large beta can drive it negative, and a negative weight would
    extrapolate away from that client's model); if every weight is 0, the round falls back to n_k / n. With the
    default beta = 1 the clip can only bind on a client holding fewer rows than rounds run.

    The report's `client_weights` are omega_k; `round_scalars` hold `fairfed_global_metric` (F_g on the clients'
    training data, before local training) and `fairfed_mean_gap` (mean Delta).

    Parameters (beyond `WeightedAggregation`'s)
    ----------
    beta : float >= 0, default 1.0 (declearn's default, on declearn's scale: weights start at n_k)
        Fairness budget: how many samples' worth of weight a unit of fairness gap moves per round.
    metric : "eod" (default) | "spd"
    """

    client_requests = (PRETRAIN_EVALUATION,)
    requires_sensitive_attribute = True
    _parameter_constraints = {"beta": [Interval(Real, 0, None, closed="left")], "metric": [Options(METRICS)]}

    def __init__(self, *, beta: float = 1.0, metric: str = "eod", **kwargs: Any) -> None:
        if beta < 0:
            raise ValueError(f"beta={beta!r}: must be >= 0")
        if metric not in METRICS:
            raise ValueError(f"metric={metric!r}: one of {', '.join(METRICS)}")
        super().__init__(**kwargs)
        self.beta, self.metric = float(beta), metric
        self.omega_bar: dict[int, float] = {}

    def summary(self) -> None:
        log(INFO, "\t├──> FairFed: beta=%s, metric=%s", self.beta, self.metric)
        super().summary()

    def train_config(self, config: ConfigRecord) -> ConfigRecord:
        return ConfigRecord({**dict(super().train_config(config)), PRETRAIN_EVAL_KEY: True})

    def aggregation_weights(self, server_round: int, replies: Sequence[Message]) -> np.ndarray:
        """omega_k of this round's clients, from the group counts their replies carry."""
        nodes = [reply.metadata.src_node_id for reply in replies]
        counts = [GroupCounts.from_metrics(next(iter(reply.content.metric_records.values()))) for reply in replies]
        missing = [node for node, c in zip(nodes, counts, strict=True) if c is None]
        if missing:
            raise ValueError(f"FairFed has no group counts from node(s) {missing}: "
                             "their data needs a sensitive attribute (dataset=fair_synthetic or dataset=adult)")
        weights = self.fairness_weights(nodes, [single_metric(reply.content, NUM_EXAMPLES) for reply in replies],
                                        counts)
        self.round_scalars["fairfed_global_metric"] = pooled(counts).metric(self.metric)
        return weights

    def fairness_weights(self, nodes: Sequence[int], num_examples: Sequence[float],
                         counts: Sequence[GroupCounts]) -> np.ndarray:
        """Update the cumulative omega_bar of this round's clients and return their normalised weights omega."""
        sizes = np.asarray(num_examples, dtype=np.float64)
        for node, size in zip(nodes, sizes, strict=True):
            self.omega_bar.setdefault(node, float(size))
        gaps = fairness_gaps(counts, self.metric)
        previous = np.array([self.omega_bar[node] for node in nodes])
        current = update_weights(previous, gaps, self.beta)
        self.omega_bar.update({node: float(value) for node, value in zip(nodes, current, strict=True)})
        self.round_scalars["fairfed_mean_gap"] = float(gaps.mean())
        if current.sum() <= 0:
            return sizes / sizes.sum()
        return current / current.sum()
