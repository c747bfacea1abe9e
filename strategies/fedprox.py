"""FedProx (Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith, MLSys 2020): a proximal term and partial work."""

from __future__ import annotations

from logging import INFO
from numbers import Real
from typing import Any

from flwr.app import ConfigRecord
from flwr.supercore import log

from fedsim.protocol.constraints import Interval
from fedsim.protocol.keys import PROXIMAL_MU_KEY

from .fedavg import FedAvg


class FedProx(FedAvg):
    r"""FedProx: clients minimise h_k(w; w^t) = F_k(w) + (mu/2) ||w - w^t||^2; the server averages by n_k.

    Client update (the reference's PerturbedGradientDescent): w <- w - lr (grad F_k(w; batch) + mu (w - w^t)),
    with w^t the received global model. The strategy sends `proximal-mu` in the train ConfigRecord, as Flower's
    FedProx does; fedsim's ClientApp adds the term (any Flower client reading `proximal-mu` works too). That
    optimiser has no momentum: configs/strategy/fedprox.yaml's `client_optimizer` block has fedsim's clients run
    plain SGD under this strategy (see `fedsim.build.client_optimizer`), where fedsim's default client momentum is
    0.9.

    Systems heterogeneity (reference `flearn/trainers/fedprox.py`): a `stragglers_fraction` of the sampled clients
    straggle; under FedProx they train a random number of epochs, uniform on 1..E-1 (numpy's `randint(1, E)`, as
    in the code; the paper says [1, E]), sent as `local-epochs`, and their partial solutions are aggregated.

    Parameters (beyond `WeightedAggregation`'s)
    ----------
    proximal_mu : float >= 0
        mu; 0 gives FedAvg's client objective. The paper tunes it over {0.001, 0.01, 0.1, 1} (1 on Synthetic).
    straggler_mode : "partial" (default, FedProx) | "drop"
    """

    _parameter_constraints = {"proximal_mu": [Interval(Real, 0, None, closed="left")]}

    def __init__(self, *, proximal_mu: float = 0.0, straggler_mode: str = "partial", **kwargs: Any) -> None:
        if proximal_mu < 0:
            raise ValueError(f"proximal_mu={proximal_mu!r}: must be >= 0")
        super().__init__(straggler_mode=straggler_mode, **kwargs)
        self.proximal_mu = proximal_mu

    def summary(self) -> None:
        log(INFO, "\t├──> Proximal mu: %s", self.proximal_mu)
        super().summary()

    def train_config(self, config: ConfigRecord) -> ConfigRecord:
        return ConfigRecord({**dict(super().train_config(config)), PROXIMAL_MU_KEY: self.proximal_mu})
