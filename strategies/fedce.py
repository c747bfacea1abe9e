"""FedCE (Jiang, Wang, Dou, CVPR 2023, "Fair Federated Medical Image Segmentation via Client Contribution
Estimation"): aggregation weights from each client's contribution in gradient space and in data space.

Reference: `NVIDIA/NVFlare` `research/fed-ce` (original) and `nvflare/app_opt/pt/fedce.py` (newer library code).
The server half is `FedCE`; the client half is the request at the bottom (`FedCE.client_requests`), which fedsim's
ClientApp answers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.supercore import log

from fedsim.protocol.constraints import Options
from fedsim.protocol.requests import ClientRequest, LocalRound

from .base import WeightedAggregation
from .common import single_array_record, single_metric

# Train ConfigRecord key: the node's contribution weight of the previous round (0.0 when it has none). Its presence
# is what makes a fedsim client compute the data-space score.
COEF_KEY = "fedce-coef"
# Reply metric: s_i = 1 - mean over rounds of the minus model's local validation accuracy.
MINUS_SCORE = "fedce_minus_score"
# Client state (context.state) records: the last trained local model, and the running mean of the minus accuracy.
LOCAL_MODEL_RECORD = "fedce-local-model"
HISTORY_RECORD = "fedce-minus-history"

MODES = ("plus", "times")
EPS = 1e-6
# BatchNorm-style buffers: aggregated, but not part of the gradient-space cosine (the reference uses trainable
# parameters only there).
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
# 1 - p below this: the global model is (almost) this client's own model, so there is nothing to subtract from.
MIN_REST = 1e-3


def is_parameter(name: str, array: np.ndarray) -> bool:
    """A float array that is not a BatchNorm-style buffer."""
    return np.issubdtype(array.dtype, np.floating) and not name.endswith(BUFFER_SUFFIXES)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """cos(a, b), 0 when either vector is 0 (the newer reference code's rule)."""
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / norms) if norms > 0 else 0.0


def normalised(values: Sequence[float]) -> np.ndarray:
    """Clamp at EPS and scale to sum 1 (the newer reference code's normalisation)."""
    clamped = np.maximum(np.asarray(values, dtype=np.float64), EPS)
    return clamped / clamped.sum()


def combine(gradient_scores: Sequence[float], data_scores: Sequence[float], mode: str = "plus") -> np.ndarray:
    """p = normalise(c_hat + s_hat) ("plus", the reference's default) or normalise(c_hat * s_hat) ("times")."""
    c_hat, s_hat = normalised(gradient_scores), normalised(data_scores)
    if mode == "plus":
        return normalised(c_hat + s_hat)
    if mode == "times":
        return normalised(c_hat * s_hat)
    raise ValueError(f"mode={mode!r}: one of {', '.join(MODES)}")


class FedCE(WeightedAggregation):
    """FedAvg whose weights p_i estimate each client's contribution, recomputed every round.

    Round t, over the round's participants with prior weights p^prev:
        Delta_i = theta_i - theta^t,  g = sum_j p_j^prev Delta_j,  g_-i = g - p_i^prev Delta_i,
        c_i = max(0, 1 - mean_{tau <= t} cos(Delta_i, g_-i))        (gradient space; cos over parameters only)
        s_i = 1 - mean_{tau <= t} acc_i(theta_-i)                   (data space; reported by the client)
        p = normalise(normalise(c) + normalise(s))  ("plus")  or  normalise(normalise(c) * normalise(s))  ("times")
        theta^{t+1} = theta^t + sum_i p_i Delta_i                   (every array, buffers included)
    A client whose update disagrees with the others', or whose data the others' model predicts badly, weighs more.

    The prior p^prev is the previous round's p, as in the paper and the newer `nvflare/app_opt/pt/fedce.py`; the
    original research `fedce_assembler.py` never stores its new weights and so always uses 1/N (a bug we do not
    copy). Round 1 uses 1/N.

    Adaptations: the data-space score uses classification accuracy where the reference uses Dice. Under partial
    participation the prior is restricted to the round's participants (a node never weighted before gets 1/N) and
    renormalised, and the running means are over the rounds a node took part in. A node learns its previous weight
    (`fedce-coef`) only if it took part in the previous round, since only then is its local model inside theta^t;
    otherwise it gets 0.0 and its minus model is theta^t itself.

    Parameters (beyond `WeightedAggregation`'s)
    ----------
    mode : "plus" (default) | "times"
    """

    _parameter_constraints = {"mode": [Options(MODES)]}

    def __init__(self, *, mode: str = "plus", **kwargs: Any) -> None:
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}: one of {', '.join(MODES)}")
        super().__init__(**kwargs)
        self.mode = mode
        self.weights: dict[int, float] = {}  # p of each node's last round
        self.last_participants: set[int] = set()
        self.cos_history: dict[int, list[float]] = {}

    def summary(self) -> None:
        log(INFO, "\t├──> FedCE: mode=%s", self.mode)
        super().summary()

    def node_config(self, node_id: int) -> dict[str, Any]:
        return {COEF_KEY: self.previous_coef(node_id)}

    def previous_coef(self, node: int) -> float:
        return float(self.weights.get(node, 0.0)) if node in self.last_participants else 0.0

    def prior(self, nodes: Sequence[int]) -> np.ndarray:
        """p^prev restricted to `nodes` and renormalised; 1/N for nodes without a weight yet."""
        return normalised([self.weights.get(node, 1.0 / len(nodes)) for node in nodes])

    def _deltas(self, replies: Sequence[Message]) -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]]:
        """theta^t and each reply's Delta_i = theta_i - theta^t (float64)."""
        if self.current_arrays is None:
            raise RuntimeError("FedCE aggregate_train before configure_train: the round's global model is unknown")
        base = {name: array.numpy() for name, array in self.current_arrays.items()}
        deltas = [
            {name: record[name].numpy().astype(np.float64) - base[name].astype(np.float64) for name in base}
            for record in (single_array_record(reply.content) for reply in replies)
        ]
        return base, deltas

    def aggregation_weights(self, server_round: int, replies: Sequence[Message]) -> np.ndarray:
        nodes = [reply.metadata.src_node_id for reply in replies]
        missing = [reply.metadata.src_node_id for reply in replies if MINUS_SCORE not in _metrics(reply.content)]
        if missing:
            raise ValueError(f"FedCE has no '{MINUS_SCORE}' from node(s) {missing}: clients must answer '{COEF_KEY}'")
        base, deltas = self._deltas(replies)
        cosines = gradient_cosines(deltas, self.prior(nodes), [n for n, a in base.items() if is_parameter(n, a)])
        for node, value in zip(nodes, cosines, strict=True):
            self.cos_history.setdefault(node, []).append(value)
        gradient_scores = [max(0.0, 1.0 - float(np.mean(self.cos_history[node]))) for node in nodes]
        data_scores = [single_metric(reply.content, MINUS_SCORE) for reply in replies]
        weights = combine(gradient_scores, data_scores, self.mode)
        self.weights.update({node: float(w) for node, w in zip(nodes, weights, strict=True)})
        self.last_participants = set(nodes)
        return weights

    def average(self, server_round: int, replies: Sequence[Message], weights: Sequence[float]) -> ArrayRecord:
        """theta^{t+1} = theta^t + sum_i p_i Delta_i, every array (buffers included)."""
        base, deltas = self._deltas(replies)
        return ArrayRecord({name: Array(step(base[name], [d[name] for d in deltas], weights)) for name in base})


def gradient_cosines(deltas: Sequence[Mapping[str, np.ndarray]], prior: Sequence[float],
                     names: Sequence[str]) -> list[float]:
    """cos(Delta_i, g - p_i Delta_i) with g = sum_j p_j Delta_j, over the named arrays flattened together."""
    flat = [np.concatenate([delta[name].ravel() for name in names]) if names else np.zeros(0) for delta in deltas]
    consensus = sum(p * d for p, d in zip(prior, flat, strict=True))
    return [cosine(d, consensus - p * d) for p, d in zip(prior, flat, strict=True)]


def step(base: np.ndarray, deltas: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """theta + sum_i p_i Delta_i in float64, cast back to the array's dtype (rounded for integer buffers)."""
    total = base.astype(np.float64) + sum(float(w) * d for w, d in zip(weights, deltas, strict=True))
    cast = total if np.issubdtype(base.dtype, np.floating) else np.rint(total)
    return np.ascontiguousarray(cast.astype(base.dtype))


def _metrics(content: RecordDict) -> MetricRecord:
    return next(iter(content.metric_records.values()))


# --- client side ---------------------------------------------------------------------------------------------


def minus_model(global_arrays: ArrayRecord, local_arrays: ArrayRecord, coef: float) -> ArrayRecord:
    """theta_-i = (theta^t - p_i theta_i^local) / (1 - p_i): the global model with this client's last local model
    taken out. Non-float arrays are copied from theta^t; with 1 - p_i < MIN_REST there is no "rest" to recover and
    theta^t is returned as it is."""
    if 1.0 - coef < MIN_REST:
        return ArrayRecord({name: Array(array.numpy().copy()) for name, array in global_arrays.items()})
    out: dict[str, Array] = {}
    for name, array in global_arrays.items():
        value = array.numpy()
        if np.issubdtype(value.dtype, np.floating):
            rest = (value.astype(np.float64) - coef * local_arrays[name].numpy().astype(np.float64)) / (1.0 - coef)
            value = rest.astype(value.dtype)
        out[name] = Array(np.ascontiguousarray(value))
    return ArrayRecord(out)


def running_mean(mean: float, count: int, value: float) -> tuple[float, int]:
    """The mean of count + 1 values, given the mean of the first `count`."""
    return (mean * count + value) / (count + 1), count + 1


def client_minus_score(state: RecordDict, global_arrays: ArrayRecord, coef: float,
                       accuracy_of: Callable[[ArrayRecord], float]) -> float:
    """s_i = 1 - mean of m over this client's rounds, m = accuracy_of(theta_-i); m = 0 the first time (no local
    model yet). Updates the running mean in `state`; call it before training, and `remember_local_model` after."""
    history = state.get(HISTORY_RECORD, MetricRecord({"mean": 0.0, "count": 0}))
    local = state.get(LOCAL_MODEL_RECORD)
    accuracy = 0.0 if local is None else float(accuracy_of(minus_model(global_arrays, local, coef)))
    mean, count = running_mean(float(history["mean"]), int(history["count"]), accuracy)
    state[HISTORY_RECORD] = MetricRecord({"mean": mean, "count": count})
    return 1.0 - mean


def remember_local_model(state: RecordDict, arrays: ArrayRecord) -> None:
    state[LOCAL_MODEL_RECORD] = arrays


def minus_score_before_training(local: LocalRound) -> dict[str, float]:
    """s_i, with theta_-i scored on the client's validation split (its training rows if it holds none)."""
    def accuracy_of(arrays: ArrayRecord) -> float:
        return local.evaluate(arrays, split="validation")["accuracy"]

    return {MINUS_SCORE: client_minus_score(local.state, local.received, float(local.config[COEF_KEY]), accuracy_of)}


def keep_local_model_after_training(local: LocalRound, trained: ArrayRecord, reply: RecordDict) -> None:
    remember_local_model(local.state, trained)


# Declared after the client half it names. The coefficient may be 0.0, so the key's presence is the request.
FedCE.client_requests = (
    ClientRequest(COEF_KEY, before=minus_score_before_training, after=keep_local_model_after_training,
                  by_presence=True),
)
