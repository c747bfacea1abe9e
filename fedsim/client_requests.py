"""What strategies may ask of a client in a train round, beyond training: each request is a key in the train
ConfigRecord, answered by one function here. `fedsim.client.train` runs the "before" answers on the received model,
trains, then runs the "after" answers; a request the config does not carry costs nothing.

- `pretrain-eval` (q-FFL, FairFed): the received model's loss and accuracy on the whole training set, and for data
  with a sensitive attribute its group counts (FairFed's local fairness);
- `fedce-coef` (FedCE): the data-space score of the "minus" model; the trained model is kept for the next round;
- `label-histogram` (FedDisco): the training-label counts, once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
from torch import nn

from .data.tensors import ArrayDataset
from .experiment import PRETRAIN_EVAL_KEY, build_model
from .fairness import model_group_counts
from .strategies.fedce import COEF_KEY, MINUS_SCORE, client_minus_score, remember_local_model
from .strategies.feddisco import HISTOGRAM_RECORD, HISTOGRAM_REQUEST_KEY, histogram_reply
from .training import evaluate

if TYPE_CHECKING:
    from .data.federation import Federation


@dataclass
class LocalRound:
    """One train round on one client, as the request handlers see it."""

    config: ConfigRecord
    context: Context
    experiment: dict[str, Any]
    federation: Federation
    received: ArrayRecord
    model: nn.Module  # holds the received model before training, the trained one after
    train_data: ArrayDataset
    val_data: ArrayDataset
    device: torch.device


def pretrain_evaluation(local: LocalRound) -> dict[str, float]:
    """F_k(w^t) for q-FFL (and FairFed's group counts): the received model on the whole training set."""
    before = evaluate(local.model, local.train_data, local.device)
    metrics = {"pretrain_loss": before.loss, "pretrain_accuracy": before.accuracy}
    if local.train_data.sensitive is not None:
        metrics.update(model_group_counts(local.model, local.train_data, local.device).to_metrics())
    return metrics


def fedce_minus_score(local: LocalRound) -> dict[str, float]:
    """FedCE's s_i: the global model without this client's last local model, scored on its validation split."""
    probe = build_model(local.experiment, local.federation.data)
    scored = local.val_data if len(local.val_data) else local.train_data

    def accuracy_of(arrays: ArrayRecord) -> float:
        probe.load_state_dict(arrays.to_torch_state_dict())
        return evaluate(probe, scored, local.device).accuracy

    return {MINUS_SCORE: client_minus_score(local.context.state, local.received, float(local.config[COEF_KEY]), accuracy_of)}


def fedce_keep_local_model(local: LocalRound, trained: ArrayRecord, content: RecordDict) -> None:
    remember_local_model(local.context.state, trained)


def feddisco_histogram(local: LocalRound, trained: ArrayRecord, content: RecordDict) -> None:
    counts = torch.bincount(local.train_data.y, minlength=local.federation.data.num_classes)
    content[HISTOGRAM_RECORD] = histogram_reply(counts.tolist())


# config key -> answer, in the order they run
BEFORE_TRAINING: dict[str, Callable[[LocalRound], dict[str, float]]] = {
    PRETRAIN_EVAL_KEY: pretrain_evaluation,
    COEF_KEY: fedce_minus_score,
}
AFTER_TRAINING: dict[str, Callable[[LocalRound, ArrayRecord, RecordDict], None]] = {
    COEF_KEY: fedce_keep_local_model,
    HISTOGRAM_REQUEST_KEY: feddisco_histogram,
}


def asked(config: ConfigRecord, key: str) -> bool:
    """A request is made by its key: FedCE's coefficient may be 0.0, the flags are true."""
    return key in config and (key == COEF_KEY or bool(config[key]))
