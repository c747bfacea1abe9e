"""FedAvg (McMahan et al., AISTATS 2017) with FedProx's systems-heterogeneity setting."""

from __future__ import annotations

from typing import Any

from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

from .common import RoundReport
from .stragglers import StragglerMixin


class FedAvg(StragglerMixin, RoundReport, FlowerFedAvg):
    """Flower's message-based FedAvg, w = sum_k n_k w_k / sum_k n_k, plus stragglers.

    With `stragglers_fraction = 0` (the default) this is exactly Flower's FedAvg. Otherwise that fraction of each
    round's sampled clients straggle; with `straggler_mode="drop"` (FedAvg in the FedProx paper's code) they get no
    training instruction and only the active clients are averaged.

    Parameters (beyond Flower's FedAvg)
    ----------
    stragglers_fraction : float in [0, 1)
        Share of the sampled clients that straggle each round (the FedProx paper uses 0, 0.5, 0.9).
    local_epochs : int
        E, the clients' full local work; stragglers under `partial` mode draw from 1..E-1.
    straggler_mode : "drop" | "partial"
    seed : int
        Seeds the straggler choice together with the round, so every strategy sees the same stragglers.
    """

    def __init__(
        self,
        *,
        stragglers_fraction: float = 0.0,
        local_epochs: int = 1,
        straggler_mode: str = "drop",
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._init_stragglers(stragglers_fraction, local_epochs, straggler_mode, seed)
        self.reset_report()
