"""Client requests more than one strategy makes (`fedsim.protocol.requests.ClientRequest`)."""

from __future__ import annotations

from fedsim.protocol.requests import ClientRequest, LocalRound

# Train ConfigRecord flag: evaluate the received model on the whole training set before training.
PRETRAIN_EVAL_KEY = "pretrain-eval"
PRETRAIN_LOSS = "pretrain_loss"
PRETRAIN_ACCURACY = "pretrain_accuracy"


def pretrain_evaluation(local: LocalRound) -> dict[str, float]:
    """F_k(w^t) (q-FFL) and, on data with a sensitive attribute, the group counts (FairFed's local fairness): the
    received model on the client's whole training set."""
    metrics = local.evaluate(split="train", group_counts=True)
    loss, accuracy = metrics.pop("loss"), metrics.pop("accuracy")
    return {PRETRAIN_LOSS: loss, PRETRAIN_ACCURACY: accuracy, **metrics}


PRETRAIN_EVALUATION = ClientRequest(PRETRAIN_EVAL_KEY, before=pretrain_evaluation)
