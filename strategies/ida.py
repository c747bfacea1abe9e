"""IDA, Inverse Distance Aggregation (Yeganeh, Farshad, Navab, Albarqouni; MICCAI DART/DCL 2020; arXiv 2008.07665):
a client whose model lies far from the cohort's mean counts less, which damps noisy and out-of-distribution clients.

No official code exists; the rule is the commonly cited one (specification §10, tagged "recalled"), and each point
the sources leave open (distance per layer or global, plain or weighted mean, the INTRAC variants) is an option.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from logging import INFO
from numbers import Real
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.supercore import log

from fedsim.protocol.constraints import Interval, InvalidParameter, Options
from fedsim.protocol.keys import TRAIN_ACCURACY

from .base import WeightedAggregation
from .common import single_array_record, single_metric, to_array_record, weighted_average

DISTANCES = ("global", "per_layer")
MEANS = ("plain", "weighted")
# BatchNorm-style buffers: averaged as FedAvg does, never part of the distance.
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def is_trainable(name: str, array: np.ndarray) -> bool:
    """A floating array that is not a BatchNorm-style buffer."""
    return np.issubdtype(array.dtype, np.floating) and not name.endswith(BUFFER_SUFFIXES)


def squared_distances(records: Sequence[ArrayRecord], names: Sequence[str],
                      mean_weights: Sequence[float]) -> np.ndarray:
    """||w_k,l - w-bar_l||^2 for every model k (rows) and named array l (columns), w-bar_l = sum_k m_k w_k,l.

    Two passes over the models, one array at a time in float64: memory of one array, not of K of them.
    """
    out = np.zeros((len(records), len(names)))
    for column, name in enumerate(names):
        mean = np.zeros(records[0][name].numpy().shape)
        for record, weight in zip(records, mean_weights, strict=True):
            mean += float(weight) * record[name].numpy().astype(np.float64)
        for row, record in enumerate(records):
            out[row, column] = np.sum((record[name].numpy().astype(np.float64) - mean) ** 2)
    return out


def inverse_distance_weights(distances: np.ndarray, factors: np.ndarray, epsilon: float) -> np.ndarray:
    """alpha_k = f_k / (d_k + eps), normalised to sum 1 (along the first axis)."""
    raw = factors.reshape((-1,) + (1,) * (distances.ndim - 1)) / (distances + epsilon)
    return raw / raw.sum(axis=0)


class IDA(WeightedAggregation):
    """w' = sum_k alpha_k w_k with alpha_k proportional to 1 / ||w_k - w-bar||: the cohort's outliers count less.

    Round t, over the K valid replies, with trainable arrays (floating, not running_mean / running_var /
    num_batches_tracked):
        w-bar = (1/K) sum_k w_k  ("plain")   or   sum_k n_k w_k / sum_k n_k  ("weighted")
        d_k = ||w_k - w-bar||_2  over every trainable array flattened together ("global"),
              or d_k,l over array l alone ("per_layer": each array averaged with its own alpha_k,l)
        alpha_k proportional to  f_k / (d_k + eps),  normalised to sum 1
        f_k = 1, times n_k with `weight_by_examples` (IDA+FedAvg), times 1 / (acc_k + eps) with
              `inverse_train_accuracy` (IDA+INTRAC; acc_k the reply's training accuracy)
        w'  = sum_k alpha_k w_k  on trainable arrays; buffers and integer arrays sum_k n_k w_k / n as FedAvg.
    With `inverse_distance=False` alpha_k is proportional to f_k alone (INTRAC alone, with
    `inverse_train_accuracy=True`). The reported client weights are alpha_k (per_layer: the mean of alpha_k,l over
    the trainable arrays). Identical models, or K = 1, give equal weights through eps.

    The sources settle none of: global or per-layer distance, plain or weighted mean, the exact INTRAC form; the
    defaults follow the most likely reading (global, plain, 1/acc).

    Parameters (beyond `WeightedAggregation`'s)
    ----------
    distance : "global" (default) | "per_layer"
    mean : "plain" (default) | "weighted"
    weight_by_examples : bool, default False
    inverse_train_accuracy : bool, default False
    inverse_distance : bool, default True
        False (with inverse_train_accuracy) drops the distance: INTRAC alone. Both False is refused.
    epsilon : float > 0, default 1e-8
    """

    _parameter_constraints = {
        "distance": [Options(DISTANCES)],
        "mean": [Options(MEANS)],
        "weight_by_examples": [bool],
        "inverse_train_accuracy": [bool],
        "inverse_distance": [bool],
        "epsilon": [Interval(Real, 0, None, closed="neither")],
    }

    @classmethod
    def check_arguments(cls, arguments: Mapping[str, Any]) -> None:
        """At least one of the inverse distance and the inverse training accuracy."""
        if not arguments.get("inverse_distance", True) and not arguments.get("inverse_train_accuracy", False):
            raise InvalidParameter("inverse_distance", False,
                                   "true, or false with inverse_train_accuracy=true (INTRAC alone)")

    def __init__(self, *, distance: str = "global", mean: str = "plain", weight_by_examples: bool = False,
                 inverse_train_accuracy: bool = False, inverse_distance: bool = True, epsilon: float = 1e-8,
                 **kwargs: Any) -> None:
        if distance not in DISTANCES:
            raise ValueError(f"distance={distance!r}: one of {', '.join(DISTANCES)}")
        if mean not in MEANS:
            raise ValueError(f"mean={mean!r}: one of {', '.join(MEANS)}")
        if not epsilon > 0:
            raise ValueError(f"epsilon={epsilon!r}: must be > 0")
        self.check_arguments({"inverse_distance": inverse_distance, "inverse_train_accuracy": inverse_train_accuracy})
        super().__init__(**kwargs)
        self.distance, self.mean, self.epsilon = distance, mean, epsilon
        self.weight_by_examples, self.inverse_train_accuracy = weight_by_examples, inverse_train_accuracy
        self.inverse_distance = inverse_distance

    def reset_report(self) -> None:
        self.layer_weights: dict[str, list[float]] = {}  # per_layer: alpha_k,l of this round's trainable arrays
        super().reset_report()

    def summary(self) -> None:
        log(INFO, "\t├──> IDA: distance=%s, mean=%s, by examples=%s, inverse accuracy=%s, inverse distance=%s",
            self.distance, self.mean, self.weight_by_examples, self.inverse_train_accuracy, self.inverse_distance)
        super().summary()

    def factors(self, replies: Sequence[Message]) -> np.ndarray:
        """f_k: n_k with weight_by_examples, times 1 / (acc_k + eps) with inverse_train_accuracy."""
        factors = np.ones(len(replies))
        if self.weight_by_examples:
            factors *= [single_metric(reply.content, self.weighted_by_key) for reply in replies]
        if self.inverse_train_accuracy:
            missing = [reply.metadata.src_node_id for reply in replies if TRAIN_ACCURACY not in _metrics(reply.content)]
            if missing:
                raise ValueError(f"IDA with inverse_train_accuracy has no '{TRAIN_ACCURACY}' from node(s) {missing}")
            accuracies = np.array([single_metric(reply.content, TRAIN_ACCURACY) for reply in replies])
            factors /= accuracies + self.epsilon
        return factors

    def aggregation_weights(self, server_round: int, replies: Sequence[Message]) -> np.ndarray:
        factors = self.factors(replies)
        if not self.inverse_distance:
            return factors / factors.sum()
        records = [single_array_record(reply.content) for reply in replies]
        names = trainable_names(records[0])
        sizes = np.array([single_metric(reply.content, self.weighted_by_key) for reply in replies])
        mean_weights = sizes / sizes.sum() if self.mean == "weighted" else np.full(len(replies), 1 / len(replies))
        squared = squared_distances(records, names, mean_weights)
        if self.distance == "global" or not names:
            return inverse_distance_weights(np.sqrt(squared.sum(axis=1)), factors, self.epsilon)
        per_layer = inverse_distance_weights(np.sqrt(squared), factors, self.epsilon)  # K x L
        self.layer_weights = {name: per_layer[:, column].tolist() for column, name in enumerate(names)}
        return per_layer.mean(axis=1)

    def average(self, server_round: int, replies: Sequence[Message], weights: Sequence[float]) -> ArrayRecord:
        """Trainable arrays: sum_k alpha_k w_k (alpha_k,l per layer); the rest n_k-weighted; float64 sums."""
        contents = [reply.content for reply in replies]
        first = single_array_record(contents[0])
        names = trainable_names(first)
        sizes = [single_metric(content, self.weighted_by_key) for content in contents]
        others = [name for name in first.keys() if name not in names]
        arrays = weighted_average(contents, [s / sum(sizes) for s in sizes], others) if others else {}
        if self.layer_weights:
            for name in names:
                arrays.update(weighted_average(contents, self.layer_weights[name], [name]))
        elif names:
            arrays.update(weighted_average(contents, weights, names))
        return to_array_record(arrays, first.keys())


def trainable_names(record: ArrayRecord) -> list[str]:
    return [name for name, array in record.items() if is_trainable(name, array.numpy())]


def _metrics(content: RecordDict) -> MetricRecord:
    return next(iter(content.metric_records.values()))

