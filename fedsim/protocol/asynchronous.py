"""Asynchronous strategies: the server applies each client's update as it arrives (`fedsim.async_rounds`).

fedsim's asynchronous loop keeps `concurrency` clients training at once. When a client is started it gets the
current global model, its version and the config `configure_update` returns; when its reply arrives (in simulated
time order on a simulation engine, in real arrival order in deployment) the loop hands it to `apply_update` with the
model the client started from and its staleness s = (versions applied since it started). The strategy returns the
new global model, or None to keep the current one (FedBuff below K buffered updates, or a reply it refuses); each
model it returns is one new version. Everything else (federated evaluation, the round report, checkpoints of its
attributes) is as for a synchronous strategy, so an asynchronous strategy is still a Flower `Strategy`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from flwr.app import ArrayRecord, ConfigRecord, Message

MODEL_VERSION_KEY = "model-version"  # train config: the version of the global model the client starts from


@runtime_checkable
class TrainsAsynchronously(Protocol):
    """A strategy for fedsim's asynchronous loop (FedAsync, FedBuff)."""

    concurrency: int  # C: how many clients train at the same time

    def configure_update(self, version: int, arrays: ArrayRecord, config: ConfigRecord) -> ConfigRecord:
        """The train config a client starting from global model `version` (= `arrays`) gets."""

    def apply_update(self, current: ArrayRecord, start: ArrayRecord, reply: Message,
                     staleness: int) -> ArrayRecord | None:
        """The global model after `reply` (a valid train reply of a client that started from `start`, `staleness`
        versions ago; `current` is the global model now), or None to keep `current`."""
