"""FedLAW (Li, Lin, Shang, Wu, ICML 2023): learn the aggregation weights and a global shrinking factor.

Reference: `ZexiLee/ICML-2023-FedLAW` (`server_funct.py`: fedlaw_optimization, fedlaw_generate_global_model).
"""

from __future__ import annotations

from collections.abc import Sequence
from logging import INFO
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Message
from flwr.supercore import log
from torch import nn
from torch.func import functional_call

from fedsim.protocol.constraints import Interval, Items, Options
from fedsim.protocol.keys import NUM_EXAMPLES

from .base import flower_average
from .common import single_array_record, single_metric, to_array_record, weighted_average
from .fedavg import FedAvg


def reference_server_lr(dataset: str | None) -> float:
    """The reference's server learning rate (`fedlaw_optimization`): 0.01 on CIFAR-10, 0.005 on other data sets."""
    return 0.01 if dataset == "cifar10" else 0.005


class FedLAW(FedAvg):
    r"""Global model w_g = gamma * sum_i lambda_i w_i, with gamma = exp(g) and lambda = softmax(l) learned each round.

    Server optimisation (reference `fedlaw_optimization`, `server_funct='exp'`): initialise l_i = log(n_i / n) and
    g = 0, i.e. exactly FedAvg with gamma = 1; minimise the cross-entropy of the model with parameters
    gamma * sum_i lambda_i w_i on the server's proxy set, computed with `torch.func.functional_call` so gradients flow
    only to (l, g); Adam with betas (0.5, 0.999), `server_epochs` passes over the proxy set in minibatches of
    `batch_size`, model in train mode; the learning rate halves every 20 epochs (the reference's StepLR(20, 0.5),
    which only matters above 20 server epochs). gamma < 1 shrinks the global model (a learned weight decay); the
    paper finds it smaller under more heterogeneity and more local epochs.

    Clients: configs/strategy/fedlaw.yaml's `client_optimizer` block gives them the reference's SGD (momentum 0.9,
    weight decay 5e-4); the reference's client lr schedule (0.08, x0.99 a round) and its optimiser state kept across
    rounds are not reproduced (fedsim's clients use `client.lr` and a fresh optimiser each round).

    What crosses the wire: nothing beyond FedAvg (clients send weights and `num-examples`). The proxy set is the
    server's own: fedsim carves a class-balanced `server.proxy_size` (200) samples out of the training pool before
    partitioning; the reference takes it from the test split, which leaks test data.

    Normalisation buffers (decision): buffers are not shrunk or learned. Floating buffers (e.g. BatchNorm running
    statistics) are averaged with the FedAvg weights n_i / n; during the proxy optimisation the model sees clones
    of those averaged buffers, so train-mode passes cannot change what is sent. Integer buffers (batch counters)
    take the rounded FedAvg average. fedsim's models use GroupNorm and have no buffers.

    Parameters (beyond FedAvg's)
    ----------
    model : nn.Module
        The architecture (its weights are ignored): used to evaluate candidate parameters functionally.
    proxy_data : (inputs, labels)
        The server's proxy set.
    server_lr : float or "auto", default "auto"
        auto: the reference's, 0.01 on CIFAR-10 and 0.005 on every other data set (`dataset` names it).
    server_epochs : int, default 20
        0 returns FedAvg's aggregate bit for bit.
    lr_step_epochs : int, default 20, and lr_step_factor : float, default 0.5
        The server learning rate is multiplied by lr_step_factor every lr_step_epochs epochs (StepLR).
    dataset : str, optional
        The data set's name (the config passes `dataset.name`), for `server_lr: auto`.
    batch_size : int, default 128
    betas : (float, float), default (0.5, 0.999)
    device : str, default "cpu"
    """

    requires_server_data = True
    # Not checkpointed (`fedsim.checkpoint`): the run's config builds them again on resume. The model's weights play
    # no part (candidate parameters go through `functional_call`), so only the architecture matters.
    rebuilt_from_config = ("model", "proxy_x", "proxy_y", "device")
    _parameter_constraints = {
        "server_lr": [Interval(Real, 0, None, closed="neither"), Options({"auto"})],
        "server_epochs": [Interval(Integral, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "lr_step_epochs": [Interval(Integral, 1, None, closed="left")],
        "lr_step_factor": [Interval(Real, 0, 1, closed="right")],
        "betas": [Items(Interval(Real, 0, 1, closed="left"), length=2)],
        "dataset": [str, None],
    }

    def __init__(
        self,
        *,
        model: nn.Module,
        proxy_data: tuple[torch.Tensor, torch.Tensor],
        server_lr: float | str = "auto",
        server_epochs: int = 20,
        batch_size: int = 128,
        betas: tuple[float, float] = (0.5, 0.999),
        lr_step_epochs: int = 20,
        lr_step_factor: float = 0.5,
        dataset: str | None = None,
        device: str = "cpu",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if server_lr == "auto":
            server_lr = reference_server_lr(dataset)
        server_lr = float(server_lr)
        if server_epochs < 0 or server_lr <= 0 or batch_size < 1 or lr_step_epochs < 1 or not 0 < lr_step_factor <= 1:
            raise ValueError("FedLAW needs server_epochs >= 0, server_lr > 0, batch_size >= 1, lr_step_epochs >= 1 "
                             "and lr_step_factor in (0, 1]")
        self.lr_step_epochs, self.lr_step_factor = int(lr_step_epochs), float(lr_step_factor)
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.proxy_x, self.proxy_y = (t.to(self.device) for t in proxy_data)
        if len(self.proxy_y) == 0:
            raise ValueError("FedLAW needs a non-empty proxy set")
        self.server_lr, self.server_epochs, self.batch_size, self.betas = (server_lr, server_epochs, batch_size,
                                                                           tuple(betas))
        self.parameter_names = [name for name, _ in self.model.named_parameters()]
        self.gamma = 1.0  # the last round's learned shrinking factor

    def summary(self) -> None:
        log(INFO, "\t├──> FedLAW: proxy %d samples, Adam lr %s (x%s every %d epochs) betas %s, %d epochs, batch %d",
            len(self.proxy_y), self.server_lr, self.lr_step_factor, self.lr_step_epochs, self.betas, self.server_epochs,
            self.batch_size)
        super().summary()

    def learn_weights(self, stacked: dict[str, torch.Tensor], sizes: np.ndarray, buffers: dict[str, torch.Tensor],
                      server_round: int) -> tuple[float, np.ndarray]:
        """Optimise (g, l) on the proxy set; returns gamma and lambda."""
        logits_l = torch.tensor(np.log(sizes / sizes.sum()), dtype=torch.float32, device=self.device,
                                requires_grad=True)
        g = torch.zeros((), device=self.device, requires_grad=True)
        optimizer = torch.optim.Adam([logits_l, g], lr=self.server_lr, betas=self.betas)
        schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=self.lr_step_epochs, gamma=self.lr_step_factor)
        generator = torch.Generator().manual_seed(int(self.seed) * 100_003 + server_round)
        self.model.train()
        for _ in range(self.server_epochs):
            order = torch.randperm(len(self.proxy_y), generator=generator).to(self.device)
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                lam, gamma = torch.softmax(logits_l, 0), torch.exp(g)
                params = {name: gamma * torch.tensordot(lam, stacked[name], dims=1) for name in self.parameter_names}
                state = {**params, **{k: v.clone() for k, v in buffers.items()}}
                loss = nn.functional.cross_entropy(functional_call(self.model, state, (self.proxy_x[batch],)),
                                                   self.proxy_y[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            schedule.step()
        with torch.no_grad():
            return float(torch.exp(g)), torch.softmax(logits_l, 0).double().cpu().numpy()

    def aggregation_weights(self, server_round: int, replies: Sequence[Message]) -> Sequence[float]:
        """lambda, learned on the proxy set together with gamma (kept for `average`); FedAvg's n_k / n with
        `server_epochs = 0`."""
        fedavg_weights = super().aggregation_weights(server_round, replies)
        self.gamma = 1.0
        if self.server_epochs > 0:
            contents = [reply.content for reply in replies]
            names = list(single_array_record(contents[0]).keys())
            missing = set(self.parameter_names) - set(names)
            if missing:
                raise ValueError(f"FedLAW: replies lack the model's parameters {sorted(missing)}")
            stacked = {
                name: torch.stack([torch.from_numpy(single_array_record(c)[name].numpy()).float()
                                   for c in contents]).to(self.device)
                for name in self.parameter_names
            }
            buffers = {name: torch.from_numpy(array).to(self.device)
                       for name, array in self._averaged_buffers(replies).items()}
            sizes = np.array([single_metric(c, NUM_EXAMPLES) for c in contents], dtype=np.float64)
            self.gamma, fedavg_weights = self.learn_weights(stacked, sizes, buffers, server_round)
        self.round_scalars["gamma"] = self.gamma
        return fedavg_weights

    def _averaged_buffers(self, replies: Sequence[Message]) -> dict[str, np.ndarray]:
        """The arrays that are not parameters (normalisation statistics), averaged with FedAvg's n_k / n."""
        contents = [reply.content for reply in replies]
        sizes = np.array([single_metric(c, NUM_EXAMPLES) for c in contents], dtype=np.float64)
        buffer_names = [name for name in single_array_record(contents[0]).keys() if name not in self.parameter_names]
        return weighted_average(contents, sizes / sizes.sum(), buffer_names)

    def average(self, server_round: int, replies: Sequence[Message], weights: Sequence[float]) -> ArrayRecord:
        """gamma * sum_i lambda_i w_i for the parameters, FedAvg's average for buffers; FedAvg's aggregate itself
        (Flower's arithmetic) with `server_epochs = 0`."""
        if self.server_epochs == 0:
            return flower_average(replies, weights)
        contents = [reply.content for reply in replies]
        names = list(single_array_record(contents[0]).keys())
        scaled = self.gamma * np.asarray(weights, dtype=np.float64)
        arrays = {**weighted_average(contents, scaled, self.parameter_names), **self._averaged_buffers(replies)}
        return to_array_record(arrays, names)
