"""q-FFL / q-FedAvg (Li, Sanjabi, Beirami, Smith, ICLR 2020, "Fair Resource Allocation in Federated Learning")."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import QFedAvg as FlowerQFedAvg
from flwr.serverapp.strategy.qfedavg import compute_delta_and_h, get_train_loss

from fedsim.experiment import MOMENTUM_KEY, PRETRAIN_EVAL_KEY

from .common import RoundReport

PRETRAIN_LOSS = "pretrain_loss"


class QFFL(RoundReport, FlowerQFedAvg):
    r"""q-FFL: minimise sum_k p_k F_k^{q+1}(w) / (q+1), so clients with a high loss weigh more.

    Each sampled client k computes F_k(w^t), its loss on its whole training set at the received model before
    training, then runs E epochs of plain SGD (lr eta) to w_k. With L = 1/eta (reference `qffedavg.py`):

        Delta w_k = L (w^t - w_k),   Delta_k = (F_k + 1e-10)^q Delta w_k,
        h_k = q (F_k + 1e-10)^(q-1) ||Delta w_k||^2 + L (F_k + 1e-10)^q,
        w^{t+1} = w^t - sum_k Delta_k / sum_k h_k.

    The server step is Flower's message-based `QFedAvg` (its `compute_delta_and_h`, which computes exactly these
    Delta_k and h_k; a test checks it by hand); what fedsim adds is the client side. Flower's QFedAvg takes the loss from the reply's `train_loss`,
    which fedsim's clients measure during training; this strategy asks them for `pretrain-eval` and reads
    `pretrain_loss`, the paper's F_k(w^t). It also sends `momentum` 0: the Delta w / eta estimate of the gradient
    holds for plain SGD only. q = 0 gives FedAvg's update direction with an adaptive step.

    Deviation: clients are sampled uniformly (Flower's sampler; with the default full participation there is no
    sampling at all), where the reference's experiments sample in proportion to n_k.

    The report's `client_weights` are the effective weights c_k = L (F_k + 1e-10)^q / sum_j h_j of the local models
    in w^{t+1} = (1 - sum_k c_k) w^t + sum_k c_k w_k; `qffl_step` is sum_k c_k.

    Parameters (beyond Flower's QFedAvg)
    ----------
    client_learning_rate : float
        eta, the clients' learning rate (fedsim's config passes `client.lr`).
    q : float >= 0
        The reference tunes it over {0, 0.001, 0.01, 0.1, 1, 2, 5, 10, 15}; 5 on Vehicle, 1 on Synthetic.
    """

    def __init__(self, *, client_learning_rate: float, q: float = 1.0, **kwargs: Any) -> None:
        if q < 0:
            raise ValueError(f"q={q!r}: must be >= 0")
        if client_learning_rate <= 0:
            raise ValueError(f"client_learning_rate={client_learning_rate!r}: must be > 0")
        kwargs.setdefault("train_loss_key", PRETRAIN_LOSS)
        super().__init__(client_learning_rate=client_learning_rate, q=q, **kwargs)
        self.reset_report()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        config = ConfigRecord({**dict(config), PRETRAIN_EVAL_KEY: True, MOMENTUM_KEY: 0.0})
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's q-FedAvg step (its `compute_delta_and_h`), without its destructive array conversions.

        Flower's own `aggregate_train` converts every record with `keep_input=False`, which runs a full garbage
        collection per array record (about 0.2 s each in a fedsim process, 2 s a round with 10 clients).
        """
        self.reset_report()
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        if self.current_arrays is None:
            raise RuntimeError("q-FFL aggregate_train before configure_train: the round's global model is unknown")
        lipschitz = 1.0 / self.client_learning_rate
        names = list(self.current_arrays.keys())
        global_weights = [self.current_arrays[name].numpy() for name in names]
        sum_delta: list[np.ndarray] | None = None
        sum_h, numerators = 0.0, {}
        for msg in valid:
            local = [np.array(next(iter(msg.content.array_records.values()))[name].numpy()) for name in names]
            loss = get_train_loss(msg, self.train_loss_key)
            delta, h = compute_delta_and_h(global_weights, local, self.q, lipschitz, loss)
            sum_delta = delta if sum_delta is None else [total + part for total, part in zip(sum_delta, delta, strict=True)]
            sum_h += h
            numerators[msg.metadata.src_node_id] = lipschitz * float(np.float_power(loss + 1e-10, self.q))
        assert sum_delta is not None
        # The step is computed in float64 (np.float_power); the model keeps its own dtypes, or round 2's replies
        # (float32 from the clients' models) would no longer match the arrays sent.
        arrays = ArrayRecord({name: Array(np.asarray(weights - step / sum_h).astype(weights.dtype, copy=False))
                              for name, weights, step in zip(names, global_weights, sum_delta, strict=True)})
        self.client_weights = {node: numerator / sum_h for node, numerator in numerators.items()}
        self.round_scalars = {"qffl_step": float(sum(self.client_weights.values()))}
        metrics = self.train_metrics_aggr_fn([msg.content for msg in valid], self.weighted_by_key)
        return arrays, metrics
