r"""FedBuff (Nguyen, Malik, Zhan, Yousefpour, Rabbat, Malek, Huba; AISTATS 2022, arXiv 2106.06639): buffered
asynchronous aggregation.

fedsim's asynchronous loop (`fedsim.protocol.asynchronous`) keeps `concurrency` clients training at once. Client i
starts from global model x_start (version τ_i), trains, and its update Δ_i = x_start − x_after (the paper's
convention: a descent direction) arrives with staleness s_i (versions applied since it started). The server buffers
the updates and takes one step every K of them (spec §14.6 of docs/algorithms-wave2.md):

    Δ̄ += S(s_i) · Δ_i,   k += 1,          S(s) = 1/√(1 + s)   (the paper's experiments; `staleness_scaling: sqrt`)
    when k = K:   x ← x − η_g · Δ̄ / K,    Δ̄ ← 0, k ← 0       (one new global model version)

Until the K-th update `apply_update` returns None and the global model (and its version) stays. The buffer
(`buffer`, name -> float64 Δ̄ per array, and `buffered`, k) is plain data in the strategy's attributes, so fedsim's
checkpoints save and restore it with the strategy.

What crosses the wire: a starting client gets the global model and, in its train config, `model-version`; it replies
with its trained model. Δ is computed on the server from the model the client started from. The step is accumulated in
float64 and cast back to each array's dtype; integer arrays (BatchNorm's `num_batches_tracked`) take the newest
buffered reply's value. A reply without arrays, or whose arrays do not match the models' names and shapes, is not
buffered.

Report (`ReportsRound`), accumulated over the updates between two metrics rows (the core records a row every
`concurrency` updates, with the model version, so the steps taken, the updates applied and their staleness, then
calls `reset_report`): `buffered` (k now), `staleness_scale_mean` (mean S(s_i) over the row's updates) and
`updates_refused` (replies not buffered); `client_weights` maps each node to the sum of its row's updates' weights
S(s_i)/K in the steps.

Deviations seen in other code, not adopted (`staleness_scaling: none` gives FLGo's):
- FLGo's FedBuff omits the staleness scaling (S = 1).
- APPFL's scales each update by α · S(s) / num_clients.
- The paper allows any server optimiser on Δ̄/K (e.g. momentum); here it is plain SGD with rate η_g.
"""

from __future__ import annotations

from logging import INFO
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
from flwr.app import Array, ArrayRecord, Message
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg
from flwr.supercore import log

from fedsim.protocol.arrays import as_numpy
from fedsim.protocol.constraints import Interval, Options

from .asynchronous import CONCURRENCY, AsynchronousAggregation, is_float, reply_arrays, running_mean

STALENESS_SCALINGS = ("sqrt", "none")


def staleness_scale(scaling: str, staleness: int) -> float:
    """FedBuff's S(s): 1/√(1 + s) for "sqrt" (the paper's), 1 for "none" (FLGo's)."""
    if staleness < 0:
        raise ValueError(f"staleness={staleness!r}: must be >= 0")
    if scaling == "sqrt":
        return 1.0 / float(np.sqrt(1.0 + staleness))
    if scaling == "none":
        return 1.0
    raise ValueError(f"staleness_scaling={scaling!r}: one of {', '.join(STALENESS_SCALINGS)}")


class FedBuff(AsynchronousAggregation):
    r"""Buffer K staleness-scaled updates Δ_i = x_start − x_after, then x ← x − η_g Δ̄/K; see the module docstring.

    Parameters (beyond `WeightedAggregation`'s, whose synchronous rounds fedsim does not run for this strategy)
    ----------
    concurrency : int >= 1, default 10
        C, how many clients train at the same time.
    buffer_size : int >= 1, default 10
        K, the updates buffered per server step.
    server_lr : float > 0, default 1.0
        η_g; 1 with S = 1 and no staleness is FedAvg's unweighted mean of K models.
    staleness_scaling : "sqrt" (default, the paper's 1/√(1 + s)) | "none" (FLGo's)
    """

    _parameter_constraints: ClassVar[dict[str, list]] = {
        "concurrency": CONCURRENCY,
        "buffer_size": [Interval(Integral, 1, None, closed="left")],
        "server_lr": [Interval(Real, 0, None, closed="neither")],
        "staleness_scaling": [Options(STALENESS_SCALINGS)],
    }

    def __init__(self, *, concurrency: int = 10, buffer_size: int = 10, server_lr: float = 1.0,
                 staleness_scaling: str = "sqrt", **kwargs: Any) -> None:
        self._check(concurrency=concurrency, buffer_size=buffer_size, server_lr=server_lr,
                    staleness_scaling=staleness_scaling)
        self.buffer_size, self.server_lr = int(buffer_size), float(server_lr)
        self.staleness_scaling = staleness_scaling
        self.empty_buffer()
        super().__init__(concurrency=concurrency, **kwargs)

    def empty_buffer(self) -> None:
        self.buffer: dict[str, np.ndarray] = {}  # Σ S(s_i) Δ_i in float64; integer arrays: the newest reply's value
        self.buffered = 0  # k

    def summary(self) -> None:
        log(INFO, "\t├──> FedBuff: C = %s, K = %s, server lr = %s, staleness scaling %s", self.concurrency,
            self.buffer_size, self.server_lr, self.staleness_scaling)
        FlowerFedAvg.summary(self)

    def reset_report(self) -> None:
        super().reset_report()
        self.round_scalars["buffered"] = float(getattr(self, "buffered", 0))  # the buffer outlives the row

    def apply_update(self, current: ArrayRecord, start: ArrayRecord, reply: Message,
                     staleness: int) -> ArrayRecord | None:
        """Buffer S(s) (start − reply's model); at the K-th, current − η_g Δ̄/K (float64, cast back), else None."""
        trained = reply_arrays(reply, current, start)
        if trained is None:
            self._refuse()
            return None
        scale = staleness_scale(self.staleness_scaling, staleness)
        for name, after in trained.items():
            before = as_numpy(start[name])
            if not is_float(before):
                self.buffer[name] = np.array(after, dtype=before.dtype)
                continue
            delta = scale * (before.astype(np.float64) - after.astype(np.float64))
            if name in self.buffer:
                self.buffer[name] += delta
            else:
                self.buffer[name] = delta
        self.buffered += 1
        self._report(reply, scale)
        if self.buffered < self.buffer_size:
            return None
        return self._step(current)

    def _step(self, current: ArrayRecord) -> ArrayRecord:
        """x − η_g Δ̄/K, then an empty buffer."""
        stepped = {}
        for name in current.keys():
            x = as_numpy(current[name])
            stepped[name] = Array(np.ascontiguousarray(
                (x.astype(np.float64) - self.server_lr * self.buffer[name] / self.buffer_size).astype(x.dtype)
                if is_float(x) else np.array(self.buffer[name], dtype=x.dtype)))
        self.empty_buffer()
        self.round_scalars["buffered"] = 0.0
        return ArrayRecord(stepped)

    def _report(self, reply: Message, scale: float) -> None:
        count = self._count_update(reply, scale / self.buffer_size)
        self.round_scalars["buffered"] = float(self.buffered)
        running_mean(self.round_scalars, "staleness_scale_mean", scale, count)
