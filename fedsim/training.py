"""Client training and evaluation: one function each, shared by the ClientApp and by engines that batch clients.

A term a client adds to its training loss (FedProx's proximal term) is a `LocalObjective`: `train_local` calls it
on the model's parameters, and the cohort kernel (`fedsim.engines.cohort`) on each client's stacked parameters under
vmap, so the term is written once. A term of a minibatch's outputs instead (AgnosticFair's fairness penalty) is a
`fedsim.protocol.requests.BatchTerm`, which a strategy's client request hands to the round; only `train_local`
computes those.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from torch import nn

from .data.tensors import ArrayDataset

if TYPE_CHECKING:
    from .protocol.requests import BatchTerm


@dataclass(frozen=True)
class TrainSettings:
    """Local work of one client in one round."""

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    proximal_mu: float = 0.0


class LocalObjective(Protocol):
    """A term added to a client's cross-entropy, from its parameters and their values as received (the anchor)."""

    def __call__(self, params: Sequence[torch.Tensor], anchor: Sequence[torch.Tensor]) -> torch.Tensor: ...


@dataclass(frozen=True)
class ProximalTerm:
    """FedProx's (mu/2)||w - w_global||^2: keeps a client's update near the global model it received."""

    mu: float | torch.Tensor  # a number; under vmap, each client's own

    def __call__(self, params: Sequence[torch.Tensor], anchor: Sequence[torch.Tensor]) -> torch.Tensor:
        return 0.5 * self.mu * sum(torch.sum((p - a) ** 2) for p, a in zip(params, anchor, strict=True))


def local_objectives(settings: TrainSettings) -> tuple[LocalObjective, ...]:
    """The terms `settings` add to cross-entropy: the proximal term when `proximal_mu` > 0."""
    return (ProximalTerm(settings.proximal_mu),) if settings.proximal_mu > 0 else ()


@dataclass(frozen=True)
class TrainResult:
    loss: float  # mean training loss over the round's minibatches (cross-entropy, without objective terms)
    accuracy: float  # training accuracy over the round's minibatches
    num_examples: int  # local training-set size n_k (the FedAvg weight)
    steps: int


@dataclass(frozen=True)
class EvalResult:
    loss: float
    accuracy: float
    num_examples: int


def train_local(
    model: nn.Module, data: ArrayDataset, settings: TrainSettings, generator: torch.Generator, device: torch.device,
    sample_weights: torch.Tensor | None = None, objectives: Sequence[LocalObjective] | None = None,
    batch_terms: Sequence[BatchTerm] = (),
) -> TrainResult:
    """Minimise cross-entropy plus the `objectives` terms (default: `local_objectives(settings)`) and the
    `batch_terms` with SGD, starting from the model's current weights.

    The terms' anchor is the model as received (FedProx's w_global). Each epoch visits every sample once in an
    order drawn from `generator`; the last minibatch may be smaller. Weight decay and momentum are PyTorch SGD's.
    `sample_weights` (one per row, e.g. fairness reweighing) turn a minibatch's loss into mean(w_i · CE_i); the
    reported loss stays the unweighted cross-entropy. Each batch term gets the minibatch's logits and its rows'
    positions in `data` (on `device`). Image models train in channels-last memory format (faster
    kernels, same arithmetic up to float rounding) and are handed back in the usual layout.
    """
    images = data.x.dim() == 4
    model.to(device, memory_format=torch.channels_last if images else torch.preserve_format).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    terms = local_objectives(settings) if objectives is None else tuple(objectives)
    anchor = [p.detach().clone() for p in trainable] if terms else []
    optimizer = torch.optim.SGD(
        trainable, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )
    x_all, y_all = data.x.to(device), data.y.to(device)
    if images:  # channels-last: CPU max-pooling ~9x faster than in NCHW, a W1 epoch 1.7x
        x_all = x_all.contiguous(memory_format=torch.channels_last)
    weights_all = None if sample_weights is None else sample_weights.to(device)
    total_loss, total_correct, seen, steps = 0.0, 0, 0, 0
    for _ in range(settings.epochs):
        order = torch.randperm(len(data), generator=generator).to(device)
        for start in range(0, len(data), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            x, y = x_all[batch], y_all[batch]
            optimizer.zero_grad(set_to_none=True)
            logits = model(x)
            if weights_all is None:
                loss = objective = nn.functional.cross_entropy(logits, y)
            else:
                losses = nn.functional.cross_entropy(logits, y, reduction="none")
                loss, objective = losses.mean(), (weights_all[batch] * losses).mean()
            for term in terms:
                objective = objective + term(trainable, anchor)
            for batch_term in batch_terms:
                objective = objective + batch_term(logits, batch)
            objective.backward()
            optimizer.step()
            total_loss += float(loss.detach()) * len(batch)
            total_correct += int((logits.detach().argmax(1) == y).sum())
            seen += len(batch)
            steps += 1
    model.to(memory_format=torch.contiguous_format)  # replies and checkpoints keep the usual layout
    return TrainResult(
        loss=total_loss / max(seen, 1), accuracy=total_correct / max(seen, 1), num_examples=len(data), steps=steps
    )


@torch.no_grad()
def evaluate(model: nn.Module, data: ArrayDataset, device: torch.device, batch_size: int = 1024) -> EvalResult:
    """Mean cross-entropy and accuracy of the model on `data`."""
    model.to(device).eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(data), batch_size):
        x = data.x[start : start + batch_size].to(device)
        y = data.y[start : start + batch_size].to(device)
        logits = model(x)
        total_loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    count = max(len(data), 1)
    return EvalResult(loss=total_loss / count, accuracy=correct / count, num_examples=len(data))


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; `cuda` without a GPU is refused by config validation before this."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def client_seed(seed: int, server_round: int, partition_id: int) -> int:
    """The seed of a client's data order in a round: independent of which engine or process runs it."""
    return int(np.random.SeedSequence([seed, server_round, partition_id]).generate_state(1)[0])
