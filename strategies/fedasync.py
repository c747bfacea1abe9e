r"""FedAsync (Xie, Koyejo, Gupta, 2019, arXiv 1903.03934): the server mixes each client's model in as it arrives.

fedsim's asynchronous loop (`fedsim.protocol.asynchronous`) keeps `concurrency` clients training at once. A client
starts from global model version τ and trains; when its model x_new arrives while the server is at version t, its
staleness is s = t − τ (versions applied since it started) and the server mixes it in (spec §14.6 of
docs/algorithms-wave2.md; the same rule is in APPFL's `fedasync_aggregator.py` and FedLab's asynchronous handler):

    α_t = α · S(s)
    x_t = (1 − α_t) · x_{t−1} + α_t · x_new

with a staleness function S:

    constant      S(s) = 1
    polynomial    S(s) = (s + 1)^(−a)                          (a = 0.5 by default)
    hinge         S(s) = 1 if s ≤ b, else 1 / (a(s − b) + 1)    (a = 10, b = 4 by default)

Every update gives a new global model: each reply is one version. The worker minimises f(x) + (ρ/2)‖x − x_τ‖² from
the model it received (the paper's H local SGD steps are fedsim's `client.local_epochs` of local training).

What crosses the wire: a starting client gets the global model and, in its train config, `proximal-mu` = ρ (fedsim's
ClientApp adds the proximal term, as under FedProx) and `model-version` = τ; it replies with its trained model. The
mix is accumulated in float64 and cast back to each array's dtype; integer arrays (BatchNorm's `num_batches_tracked`)
take the arriving model's value. A reply without arrays, or whose arrays do not match the global model's names and
shapes, changes nothing (`apply_update` returns None; fedsim's Grid already refuses such replies).

Report (`ReportsRound`), accumulated over the updates between two metrics rows (the core records a row every
`concurrency` updates, with the model version, the updates applied and their staleness, then calls `reset_report`):
`alpha_t` (the last α_t), `alpha_t_mean` (over the row's updates) and `updates_refused` (replies that changed
nothing); `client_weights` maps each node to the sum of the α_t its models were mixed in with during the row.

Deviations seen in other code, not adopted:
- FLGo's non-official FedAsync drops the "+1" of the hinge, S(s) = 1/(a(s − b)) above b, and uses b = 6.
- FedLab's hinge is 1/(a(s − b + 1)).
- The paper's optional α decay and the adaptive "FedAsync+" variants are not implemented.

Its base, `AsynchronousAggregation` (`strategies.asynchronous`, shared with FedBuff), holds the declarations the core
reads (`asynchronous`, no stragglers), `configure_update` and the row report's bookkeeping.
"""

from __future__ import annotations

from logging import INFO
from numbers import Real
from typing import Any, ClassVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg
from flwr.supercore import log

from fedsim.protocol.arrays import as_numpy
from fedsim.protocol.constraints import Interval, Options
from fedsim.protocol.keys import PROXIMAL_MU_KEY

from .asynchronous import CONCURRENCY, AsynchronousAggregation, is_float, reply_arrays, running_mean

STALENESS_FUNCTIONS = ("constant", "polynomial", "hinge")
DEFAULT_A = {"polynomial": 0.5, "hinge": 10.0}  # `a: auto`: the paper's a of each staleness function


def staleness_weight(function: str, staleness: int, a: float | None = None, b: float = 4.0) -> float:
    """S(s) of FedAsync's staleness `function` ("constant", "polynomial" or "hinge"); `a` None: the paper's."""
    if function not in STALENESS_FUNCTIONS:
        raise ValueError(f"staleness_function={function!r}: one of {', '.join(STALENESS_FUNCTIONS)}")
    if staleness < 0:
        raise ValueError(f"staleness={staleness!r}: must be >= 0")
    if function == "constant":
        return 1.0
    a = DEFAULT_A[function] if a is None else float(a)
    if function == "polynomial":
        return float((staleness + 1.0) ** (-a))
    return 1.0 if staleness <= b else 1.0 / (a * (staleness - b) + 1.0)  # hinge


class FedAsync(AsynchronousAggregation):
    r"""x_t = (1 − α_t) x_{t−1} + α_t x_new per arriving model, α_t = α · S(staleness); see the module docstring.

    Parameters (beyond `WeightedAggregation`'s, whose synchronous rounds fedsim does not run for this strategy)
    ----------
    concurrency : int >= 1, default 10
        C, how many clients train at the same time.
    alpha : float in (0, 1], default 0.6
        α, the mixing weight of a fresh model.
    staleness_function : "constant" | "polynomial" (default) | "hinge"
    a : float >= 0 or "auto" (default)
        The staleness function's a; auto: 0.5 for polynomial, 10 for hinge (unused by constant).
    b : float >= 0, default 4
        The hinge's b: models at most b versions stale are not discounted.
    proximal_mu : float >= 0, default 0.005
        ρ, the weight of the clients' proximal term (ρ/2)‖x − x_τ‖², sent as `proximal-mu`.
    """

    _parameter_constraints: ClassVar[dict[str, list]] = {
        "concurrency": CONCURRENCY,
        "alpha": [Interval(Real, 0, 1, closed="right")],
        "staleness_function": [Options(STALENESS_FUNCTIONS)],
        "a": [Interval(Real, 0, None, closed="left"), Options({"auto"})],
        "b": [Interval(Real, 0, None, closed="left")],
        "proximal_mu": [Interval(Real, 0, None, closed="left")],
    }

    def __init__(self, *, concurrency: int = 10, alpha: float = 0.6, staleness_function: str = "polynomial",
                 a: float | str = "auto", b: float = 4.0, proximal_mu: float = 0.005, **kwargs: Any) -> None:
        self._check(concurrency=concurrency, alpha=alpha, staleness_function=staleness_function, a=a, b=b,
                    proximal_mu=proximal_mu)
        super().__init__(concurrency=concurrency, **kwargs)
        self.alpha, self.staleness_function = float(alpha), staleness_function
        self.b, self.proximal_mu = float(b), float(proximal_mu)
        self.a: float | None = None if a == "auto" else float(a)  # None: the paper's a of the staleness function

    def summary(self) -> None:
        log(INFO, "\t├──> FedAsync: C = %s, alpha = %s, S = %s (a = %s, b = %s), rho = %s", self.concurrency,
            self.alpha, self.staleness_function, self.a if self.a is not None else "auto", self.b, self.proximal_mu)
        FlowerFedAvg.summary(self)

    def train_config(self, config: ConfigRecord) -> ConfigRecord:
        return ConfigRecord({**dict(super().train_config(config)), PROXIMAL_MU_KEY: self.proximal_mu})

    def mixing_weight(self, staleness: int) -> float:
        """α_t = α · S(staleness)."""
        return self.alpha * staleness_weight(self.staleness_function, staleness, self.a, self.b)

    def apply_update(self, current: ArrayRecord, start: ArrayRecord, reply: Message,
                     staleness: int) -> ArrayRecord | None:
        """(1 − α_t) current + α_t reply's model in float64, cast back; None for a reply without matching arrays."""
        arriving = reply_arrays(reply, current)
        if arriving is None:
            self._refuse()
            return None
        alpha_t = self.mixing_weight(staleness)
        mixed = {}
        for name in current.keys():
            old = as_numpy(current[name])
            new = arriving[name]
            mixed[name] = Array(np.ascontiguousarray(
                ((1.0 - alpha_t) * old.astype(np.float64) + alpha_t * new.astype(np.float64)).astype(old.dtype)
                if is_float(old) else np.array(new, dtype=old.dtype)))
        self._report(reply, alpha_t)
        return ArrayRecord(mixed)

    def _report(self, reply: Message, alpha_t: float) -> None:
        count = self._count_update(reply, alpha_t)
        self.round_scalars["alpha_t"] = alpha_t
        running_mean(self.round_scalars, "alpha_t_mean", alpha_t, count)
