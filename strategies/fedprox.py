"""FedProx (Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith, MLSys 2020): a proximal term and partial work."""

from __future__ import annotations

from typing import Any

from flwr.serverapp.strategy import FedProx as FlowerFedProx

from .common import RoundReport
from .stragglers import StragglerMixin


class FedProx(StragglerMixin, RoundReport, FlowerFedProx):
    r"""FedProx: clients minimise h_k(w; w^t) = F_k(w) + (mu/2) ||w - w^t||^2; the server averages by n_k.

    Client update (the reference's PerturbedGradientDescent): w <- w - lr (grad F_k(w; batch) + mu (w - w^t)),
    with w^t the received global model. The strategy sends `proximal-mu` in the train ConfigRecord; fedsim's
    ClientApp adds the term (any Flower client reading `proximal-mu` works too). That optimiser has no momentum:
    configs/strategy/fedprox.yaml's `client_optimizer` block has fedsim's clients run plain SGD under this strategy
    (see `fedsim.experiment.client_optimizer`), where fedsim's default client momentum is 0.9.

    Systems heterogeneity (reference `flearn/trainers/fedprox.py`): a `stragglers_fraction` of the sampled clients
    straggle; under FedProx they train a random number of epochs, uniform on 1..E-1 (numpy's `randint(1, E)`, as
    in the code; the paper says [1, E]), sent as `local-epochs`, and their partial solutions are aggregated.

    Parameters (beyond Flower's FedAvg)
    ----------
    proximal_mu : float >= 0
        mu; 0 gives FedAvg's client objective. The paper tunes it over {0.001, 0.01, 0.1, 1} (1 on Synthetic).
    stragglers_fraction : float in [0, 1)
    local_epochs : int
        E, the full local work.
    straggler_mode : "partial" (default, FedProx) | "drop"
    seed : int
    """

    def __init__(
        self,
        *,
        proximal_mu: float = 0.0,
        stragglers_fraction: float = 0.0,
        local_epochs: int = 1,
        straggler_mode: str = "partial",
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        if proximal_mu < 0:
            raise ValueError(f"proximal_mu={proximal_mu!r}: must be >= 0")
        super().__init__(proximal_mu=proximal_mu, **kwargs)
        self._init_stragglers(stragglers_fraction, local_epochs, straggler_mode, seed)
        self.reset_report()
