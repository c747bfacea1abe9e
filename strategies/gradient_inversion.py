"""Gradient inversion of a model update (Wang & Gao, arXiv 2309.13536, after Geiping et al.'s "inverting gradients"):
find inputs X and soft labels L whose simulated local training reproduces a client's update, then train on them
from another model.

    minimise_{X, L}  Σ_tensors ‖Δ_sim(X, L) − Δ‖₁,   Δ_sim = w_K − w_start,  w_{k+1} = w_k − η ∇_w ℓ(f(X; w_k), L)

K full-batch gradient-descent steps at the client lr η, unrolled with `torch.func.functional_call`, so that the
cost is differentiable in X and L. Adam (lr `lr`) updates X with the sign of its gradient (the reference's
`signed`) and L with its gradient; the lr drops ×0.1 at 3/8, 5/8 and 7/8 of the iterations; X is clamped to the
input box after every step. `retrained_update` then runs the same K steps on (X, L) from another start (the current
global model): the update the client would have sent from there, had its data been (X, L).

X is parametrised in the reference's normalised units, X = centre + width/4 · Z with Z ∈ [−2, 2] (box [lo, hi],
centre (lo + hi)/2, width hi − lo) and Z ~ N(0, 1) at the start: for MNIST in [0, 1] this is exactly the reference's
mean 0.5 / std 0.25 normalisation and box [−dm/ds, (1 − dm)/ds], so `lr` = 1 is its step in those units. Without a
box, X = Z.

The label loss (`loss`):
- `cross_entropy` (the default): soft-label cross-entropy −Σ_c softmax(L)_c · log softmax(f(X))_c, averaged over
  the images. fedsim's clients train with cross-entropy on hard labels, the one-hot limit of this loss, so the
  client's own data (X = its rows, L → one-hot logits) is an exact zero-cost solution: the simulated update can
  match the client's update, not just approximate it.
- `bce`: the reference's `loss_steps` with 2-D labels, BCEWithLogits(f(X), L) with the unnormalised L as targets.
  Its gradient σ(f) − L is not the clients' softmax(f) − y, so no (X, L) reproduces a cross-entropy update exactly.
  (The reference's models end in log_softmax, so there it is BCE on log-probabilities.)

Pure torch: nothing here knows fedsim.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

LOSSES = ("cross_entropy", "bce")
BOX_STD = 4.0  # the box is ±2 standard deviations of the reference's normalisation (mean 0.5, std 0.25 on [0, 1])
MILESTONES = (3 / 8, 5 / 8, 7 / 8)  # the reference's MultiStepLR: iterations // 2.667, // 1.6, // 1.142

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class InversionSettings:
    """What `invert_update` and `retrained_update` need besides the model and the updates."""

    steps: int  # K, full-batch GD steps of the simulated local training
    client_lr: float  # η of those steps
    images: int = 256  # rows of X (the reference's 256)
    iterations: int = 500  # Adam iterations (the reference's 40 000; 10 000 in its streaming variant)
    lr: float = 1.0  # Adam's lr, in the normalised units of X (the reference's 1)
    box: tuple[float, float] | None = (0.0, 1.0)  # the inputs' range; None: X unbounded
    loss: str = "cross_entropy"  # or "bce" (the reference's), see the module docstring


@dataclass(frozen=True)
class Inversion:
    """The reconstruction: inputs X (images × input shape), label logits L (images × classes), and the relative fit
    error ‖Δ_sim − Δ‖₁ / ‖Δ‖₁ of the final (X, L)."""

    inputs: torch.Tensor
    labels: torch.Tensor
    fit_error: float


def label_loss(logits: torch.Tensor, labels: torch.Tensor, loss: str) -> torch.Tensor:
    """The simulated clients' loss on label logits `labels` (see the module docstring)."""
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(logits, labels)
    return -(labels.softmax(dim=1) * logits.log_softmax(dim=1)).sum(dim=1).mean()


def simulated_update(model: nn.Module, start: Mapping[str, torch.Tensor], inputs: torch.Tensor,
                     labels: torch.Tensor, steps: int, lr: float, loss: str, create_graph: bool = False) -> Tensors:
    """w_K − w_0 after K full-batch GD steps from `start` (the model's parameters by name; its buffers are the
    module's own). With `create_graph` the result is differentiable in `inputs` and `labels`."""
    params = {name: value if value.requires_grad else value.detach().requires_grad_(True)
              for name, value in start.items()}
    origin = dict(params)
    for _ in range(steps):
        objective = label_loss(functional_call(model, params, (inputs,)), labels, loss)
        grads = torch.autograd.grad(objective, list(params.values()), create_graph=create_graph)
        params = {name: value - lr * grad for (name, value), grad in zip(params.items(), grads, strict=True)}
    update = {name: params[name] - origin[name] for name in params}
    return update if create_graph else {name: value.detach() for name, value in update.items()}


def l1_distance(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Σ_tensors ‖a − b‖₁ (equal weights, the reference's `cost_fn='l1'`)."""
    return torch.stack([(a[name] - b[name]).abs().sum() for name in b]).sum()


def l1_norm(a: Mapping[str, torch.Tensor]) -> float:
    return float(sum(float(value.abs().sum()) for value in a.values()))


def relative_l1(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """‖a − b‖₁ / ‖b‖₁ over all tensors (inf when b is zero and a is not)."""
    denominator = l1_norm(b)
    numerator = float(l1_distance(a, b))
    return numerator / denominator if denominator > 0 else (0.0 if numerator == 0 else float("inf"))


def _inputs(z: torch.Tensor, box: tuple[float, float] | None) -> torch.Tensor:
    if box is None:
        return z
    low, high = box
    return (low + high) / 2 + (high - low) / BOX_STD * z


def _trainable(model: nn.Module, names: Sequence[str]) -> None:
    params = dict(model.named_parameters())
    missing = [name for name in names if name not in params]
    if missing:
        raise ValueError(f"not parameters of the model: {', '.join(missing)}")


def invert_update(model: nn.Module, start: Mapping[str, torch.Tensor], update: Mapping[str, torch.Tensor],
                  settings: InversionSettings, input_shape: Sequence[int], num_classes: int,
                  generator: torch.Generator) -> Inversion:
    """(X, L) whose simulated training from `start` matches `update` in L1 (see the module docstring).

    `start` and `update` hold the model's parameters by name, on the model's device (the module's buffers are used
    as they are: load the start model into `model` first). `generator`, a CPU generator, seeds the initial Z and L
    (randn, the reference's `init`)."""
    if settings.loss not in LOSSES:
        raise ValueError(f"loss={settings.loss!r}: one of {', '.join(LOSSES)}")
    _trainable(model, list(update))
    model.eval()
    start = {name: start[name].detach().float() for name in update}
    target = {name: value.detach().float() for name, value in update.items()}
    device = next(iter(start.values())).device
    z = torch.randn((settings.images, *input_shape), generator=generator).to(device).requires_grad_(True)
    labels = torch.randn((settings.images, num_classes), generator=generator).to(device).requires_grad_(True)
    optimizer = torch.optim.Adam([z, labels], lr=settings.lr)
    milestones = [int(settings.iterations * share) for share in MILESTONES]
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    bound = BOX_STD / 2
    for _ in range(settings.iterations):
        optimizer.zero_grad(set_to_none=True)
        simulated = simulated_update(model, start, _inputs(z, settings.box), labels, settings.steps,
                                     settings.client_lr, settings.loss, create_graph=True)
        cost = l1_distance(simulated, target)
        z.grad, labels.grad = torch.autograd.grad(cost, [z, labels])
        z.grad.sign_()
        optimizer.step()
        scheduler.step()
        if settings.box is not None:
            with torch.no_grad():
                z.clamp_(-bound, bound)
    inputs, label_logits = _inputs(z, settings.box).detach(), labels.detach()
    final = simulated_update(model, start, inputs, label_logits, settings.steps, settings.client_lr, settings.loss)
    return Inversion(inputs, label_logits, relative_l1(final, target))


def retrained_update(model: nn.Module, start: Mapping[str, torch.Tensor], inversion: Inversion,
                     settings: InversionSettings) -> Tensors:
    """Δ_rec: the same K steps on the reconstruction (X, L) from `start` (the current global model's parameters;
    load it into `model` first for its buffers)."""
    model.eval()
    start = {name: value.detach().float() for name, value in start.items()}
    return simulated_update(model, start, inversion.inputs, inversion.labels, settings.steps, settings.client_lr,
                            settings.loss)
