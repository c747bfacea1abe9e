"""Train a cohort of clients at once: parameters stacked along a client dimension, one `vmap(grad)` per step.

The kernel trains the ClientApp's own description of a round (`fedsim.client_plan.LocalTraining`) and says which it
can (`supports`, `unbatchable_reason`): the objective terms it computes (`OBJECTIVES`), no per-row sample weights or
batch terms, a model vmap can batch. Each client's arithmetic is what `fedsim.training.train_local` does for it
alone (same data order, same minibatches, PyTorch SGD's momentum and weight decay, the same `LocalObjective` terms),
so results match the one-client-at-a-time path up to float rounding. Clients with fewer steps (smaller data,
stragglers' fewer epochs) stop updating once their steps are done; their padded minibatch rows carry a zero mask, so
no sample is dropped or repeated.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from ..client_plan import LocalTraining
from ..training import ProximalTerm, TrainResult

# Layers whose training-mode forward vmap cannot batch per client, or whose randomness would differ from the
# one-client path: a model holding one trains client by client.
_UNBATCHABLE = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)  # pylint: disable=protected-access
# The objective terms the kernel computes per client (each with its own coefficient).
OBJECTIVES = (ProximalTerm,)


def supports(training: LocalTraining) -> str | None:
    """Why the kernel cannot train this round as the ClientApp would, or None when it can."""
    unknown = [type(term).__name__ for term in training.objectives if type(term) not in OBJECTIVES]
    if unknown:
        return f"objective term {unknown[0]} is not one the cohort kernel computes"
    if training.sample_weights is not None:
        return "per-row sample weights (local debiasing) are not batched"
    if training.batch_terms:
        return "batch terms (a strategy's request) are not batched"
    return None


def unbatchable_reason(model: nn.Module) -> str | None:
    """Why this model cannot train as a stacked cohort, or None when it can."""
    for name, module in model.named_modules():
        if isinstance(module, _UNBATCHABLE):
            return (f"layer {name or type(model).__name__} ({type(module).__name__}) "
                    "cannot be batched per client by vmap")
    params = dict(model.named_parameters())
    if any(not p.requires_grad for p in params.values()):
        return "the model has frozen parameters"
    extra = [key for key in model.state_dict() if key not in params]
    if extra:
        return f"the model has buffers ({extra[0]}) that training would update"
    if any(not p.is_floating_point() for p in params.values()):
        return "the model has non-floating-point parameters"
    return None


def _schedule(member: LocalTraining) -> list[torch.Tensor]:
    """The client's minibatches (row indices) in the order `train_local` visits them."""
    generator = torch.Generator().manual_seed(member.seed)
    n, size = len(member.data), member.settings.batch_size
    batches = []
    for _ in range(member.settings.epochs):
        order = torch.randperm(n, generator=generator)
        batches += [order[start : start + size] for start in range(0, n, size)]
    return batches


def _proximal_mu(member: LocalTraining) -> float:
    """The member's proximal coefficient: its proximal terms' mu summed (0 without one)."""
    return sum(float(term.mu) for term in member.objectives if isinstance(term, ProximalTerm))


def _starts(members: Sequence[LocalTraining]) -> list[dict[str, torch.Tensor]]:
    """Each member's starting weights, converted once per ArrayRecord (strategies usually send one to every node)."""
    converted: dict[int, dict[str, torch.Tensor]] = {}
    for member in members:
        if id(member.start) not in converted:
            converted[id(member.start)] = member.start.to_torch_state_dict()
    return [converted[id(member.start)] for member in members]


def train_cohort(model: nn.Module, members: Sequence[LocalTraining], device: torch.device
                 ) -> tuple[list[dict[str, torch.Tensor]], list[TrainResult]]:
    """Train every member (each one `supports` accepts) from its own starting weights; returns each one's trained
    weights (on CPU) and result.

    All members must share the batch size and weight decay (they come from the experiment config); epochs, lr,
    momentum and proximal mu may differ per member (strategies set them per node).
    """
    if not members:
        return [], []
    k = len(members)
    batch_size = members[0].settings.batch_size
    weight_decay = members[0].settings.weight_decay
    if any(m.settings.batch_size != batch_size or m.settings.weight_decay != weight_decay for m in members):
        raise ValueError("a cohort shares batch_size and weight_decay")
    model = model.to(device).train()
    names = [name for name, _ in model.named_parameters()]
    starts = _starts(members)
    params = {name: torch.stack([start[name] for start in starts]).to(device=device) for name in names}
    dtype = params[names[0]].dtype
    anchor = {name: value.clone() for name, value in params.items()}
    buffers = {name: torch.zeros_like(value) for name, value in params.items()}

    def per_client(values: list[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=device)

    lr = per_client([m.settings.lr for m in members])
    momentum = per_client([m.settings.momentum for m in members])
    mu = per_client([_proximal_mu(m) for m in members])
    use_prox = any(isinstance(term, ProximalTerm) for m in members for term in m.objectives)

    # Client data, padded to the largest client; padded rows are never unmasked.
    sizes = [len(m.data) for m in members]
    longest = max(max(sizes), 1)
    x_pad = torch.zeros((k, longest, *members[0].data.x.shape[1:]), dtype=members[0].data.x.dtype)
    y_pad = torch.zeros((k, longest), dtype=members[0].data.y.dtype)
    for i, m in enumerate(members):
        x_pad[i, : sizes[i]] = m.data.x
        y_pad[i, : sizes[i]] = m.data.y
    x_pad, y_pad = x_pad.to(device), y_pad.to(device)

    schedules = [_schedule(m) for m in members]
    steps = [len(s) for s in schedules]
    total_steps = max(steps)
    index = torch.zeros((total_steps, k, batch_size), dtype=torch.long)
    mask = torch.zeros((total_steps, k, batch_size), dtype=dtype)
    for i, schedule in enumerate(schedules):
        for step, rows in enumerate(schedule):
            index[step, i, : len(rows)] = rows
            mask[step, i, : len(rows)] = 1
    index, mask = index.to(device), mask.to(device)
    active = (torch.arange(total_steps)[:, None] < torch.tensor(steps)[None, :]).to(device)  # step x client

    def objective(p: dict[str, torch.Tensor], a: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                  w: torch.Tensor, client_mu: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        logits = functional_call(model, p, (x,))
        losses = nn.functional.cross_entropy(logits, y, reduction="none")
        count = w.sum().clamp(min=1)
        loss_sum = (losses * w).sum()
        value = loss_sum / count
        if use_prox:  # the ClientApp's term, with this client's mu
            value = value + ProximalTerm(client_mu)([p[n] for n in names], [a[n] for n in names])
        correct = ((logits.argmax(1) == y).to(w.dtype) * w).sum()
        return value, (loss_sum.detach(), correct.detach())

    step_grad = vmap(grad(objective, has_aux=True))
    rows = torch.arange(k, device=device)[:, None]
    loss_total = torch.zeros(k, dtype=torch.float64, device=device)
    correct_total = torch.zeros(k, dtype=torch.float64, device=device)
    first = True
    for step in range(total_steps):
        batch = index[step]
        x, y, w = x_pad[rows, batch], y_pad[rows, batch], mask[step]
        grads, (loss_sum, correct) = step_grad(params, anchor, x, y, w, mu)
        on = active[step]
        loss_total += loss_sum.to(torch.float64)
        correct_total += correct.to(torch.float64)
        for name in names:
            shape = (k,) + (1,) * (params[name].dim() - 1)
            g = grads[name]
            if weight_decay != 0:
                g = g.add(params[name], alpha=weight_decay)
            # torch.optim.SGD: the first step's buffer is the gradient itself; later ones momentum * buf + grad.
            # A client without momentum uses the gradient directly (0 * buf + grad is exactly grad).
            if first:
                buf = g.clone()
            else:
                buf = buffers[name] * momentum.view(shape) + g
            on_shape = on.view(shape)
            buffers[name] = torch.where(on_shape, buf, buffers[name])
            updated = params[name] - lr.view(shape) * buf
            params[name] = torch.where(on_shape, updated, params[name])
        first = False

    seen = [float(mask[:, i].sum()) for i in range(k)]
    results = [
        TrainResult(loss=float(loss_total[i]) / max(seen[i], 1), accuracy=float(correct_total[i]) / max(seen[i], 1),
                    num_examples=sizes[i], steps=steps[i])
        for i in range(k)
    ]
    trained = [{name: params[name][i].detach().cpu().clone() for name in names} for i in range(k)]
    return trained, results
