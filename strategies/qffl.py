"""q-FFL / q-FedAvg (Li, Sanjabi, Beirami, Smith, ICLR 2020, "Fair Resource Allocation in Federated Learning")."""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Real
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from flwr.serverapp.strategy.qfedavg import compute_delta_and_h, get_train_loss

from fedsim.protocol.constraints import Interval
from fedsim.protocol.keys import MOMENTUM_KEY

from .base import WeightedAggregation
from .client_requests import PRETRAIN_EVAL_KEY, PRETRAIN_EVALUATION, PRETRAIN_LOSS
from .common import single_array_record


class QFFL(WeightedAggregation):
    r"""q-FFL: minimise sum_k p_k F_k^{q+1}(w) / (q+1), so clients with a high loss weigh more.

    Each sampled client k computes F_k(w^t), its loss on its whole training set at the received model before
    training, then runs E epochs of plain SGD (lr eta) to w_k. With L = 1/eta (reference `qffedavg.py`):

        Delta w_k = L (w^t - w_k),   Delta_k = (F_k + 1e-10)^q Delta w_k,
        h_k = q (F_k + 1e-10)^(q-1) ||Delta w_k||^2 + L (F_k + 1e-10)^q,
        w^{t+1} = w^t - sum_k Delta_k / sum_k h_k.

    Delta_k and h_k come from Flower's message-based `QFedAvg` helpers (`compute_delta_and_h`; a test checks them by
    hand); what fedsim adds is the client side. Flower's QFedAvg takes the loss from the reply's `train_loss`, which
    fedsim's clients measure during training; this strategy asks them for `pretrain-eval` and reads
    `pretrain_loss`, the paper's F_k(w^t). It also sends `momentum` 0: the Delta w / eta estimate of the gradient
    holds for plain SGD only. q = 0 gives FedAvg's update direction with an adaptive step.

    Deviation: clients are sampled uniformly (Flower's sampler; with the default full participation there is no
    sampling at all), where the reference's experiments sample in proportion to n_k.

    The aggregation weights (`client_weights`) are the effective weights c_k = L (F_k + 1e-10)^q / sum_j h_j of the
    local models in w^{t+1} = (1 - sum_k c_k) w^t + sum_k c_k w_k; `qffl_step` is sum_k c_k.

    Parameters (beyond `WeightedAggregation`'s)
    ----------
    client_learning_rate : float
        eta, the clients' learning rate (fedsim's config passes `client.lr`).
    q : float >= 0
        The reference tunes it over {0, 0.001, 0.01, 0.1, 1, 2, 5, 10, 15}; 5 on Vehicle, 1 on Synthetic.
    train_loss_key : str, default "pretrain_loss"
        The reply metric read as F_k(w^t).
    """

    client_requests = (PRETRAIN_EVALUATION,)
    client_settings = {MOMENTUM_KEY: 0.0}
    _parameter_constraints = {
        "q": [Interval(Real, 0, None, closed="left")],
        "client_learning_rate": [Interval(Real, 0, None, closed="neither")],
    }

    def __init__(self, *, client_learning_rate: float, q: float = 1.0, train_loss_key: str = PRETRAIN_LOSS,
                 **kwargs: Any) -> None:
        if q < 0:
            raise ValueError(f"q={q!r}: must be >= 0")
        if client_learning_rate <= 0:
            raise ValueError(f"client_learning_rate={client_learning_rate!r}: must be > 0")
        super().__init__(**kwargs)
        self.client_learning_rate, self.q, self.train_loss_key = client_learning_rate, q, train_loss_key

    def train_config(self, config: ConfigRecord) -> ConfigRecord:
        return ConfigRecord({**dict(super().train_config(config)), PRETRAIN_EVAL_KEY: True, **self.client_settings})

    def _deltas_and_h(
        self, replies: Sequence[Message]
    ) -> tuple[list[str], list[np.ndarray], list[tuple[list[np.ndarray], float, float]]]:
        """The global arrays' names and values, and each reply's (Delta_k, h_k, F_k)."""
        if self.current_arrays is None:
            raise RuntimeError("q-FFL aggregate_train before configure_train: the round's global model is unknown")
        lipschitz = 1.0 / self.client_learning_rate
        names = list(self.current_arrays.keys())
        global_weights = [self.current_arrays[name].numpy() for name in names]
        parts = []
        for reply in replies:
            local = [np.array(single_array_record(reply.content)[name].numpy()) for name in names]
            loss = get_train_loss(reply, self.train_loss_key)
            delta, h = compute_delta_and_h(global_weights, local, self.q, lipschitz, loss)
            parts.append((delta, h, loss))
        return names, global_weights, parts

    def aggregation_weights(self, server_round: int, replies: Sequence[Message]) -> list[float]:
        """c_k = L (F_k + 1e-10)^q / sum_j h_j; their sum is the round's `qffl_step`."""
        _, _, parts = self._deltas_and_h(replies)
        sum_h = sum(h for _, h, _ in parts)
        lipschitz = 1.0 / self.client_learning_rate
        weights = [lipschitz * float(np.float_power(loss + 1e-10, self.q)) / sum_h for _, _, loss in parts]
        self.round_scalars["qffl_step"] = float(sum(weights))
        return weights

    def average(self, server_round: int, replies: Sequence[Message], weights: Sequence[float]) -> ArrayRecord:
        """w^{t+1} = w^t - sum_k Delta_k / sum_k h_k, computed in float64 (np.float_power) and cast back to each
        array's dtype, or round 2's replies (float32 from the clients' models) would no longer match the arrays sent.

        Flower's own `aggregate_train` converts every record with `keep_input=False`, which runs a full garbage
        collection per array record (about 0.2 s each in a fedsim process, 2 s a round with 10 clients): this step
        reads the arrays without converting them."""
        names, global_weights, parts = self._deltas_and_h(replies)
        sum_delta = parts[0][0]
        for delta, _, _ in parts[1:]:
            sum_delta = [total + part for total, part in zip(sum_delta, delta, strict=True)]
        sum_h = sum(h for _, h, _ in parts)
        return ArrayRecord({name: Array(np.asarray(weights_ - step / sum_h).astype(weights_.dtype, copy=False))
                            for name, weights_, step in zip(names, global_weights, sum_delta, strict=True)})
