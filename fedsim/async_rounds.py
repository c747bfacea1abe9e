"""The asynchronous loop of a fedsim run: `concurrency` clients train at once and the server applies each reply as it
comes (FedAsync, FedBuff: `fedsim.protocol.asynchronous`), on Flower's Grid (`push_messages` / `pull_messages`).

Whenever a slot is free the loop starts an idle client, drawn uniformly at random among those the device model has
online (a draw keyed by (seed, dispatch number), so it does not depend on timing; if none is, any idle one), with
the current global model and its version. Which reply the server applies next depends on where the run is:
- in simulation (`order="virtual"`), the one the virtual clock (`fedsim.clock`) says arrives first: each client's
  call lasts its compute (its training rows times its epochs over its device's speed) plus its transfers, known when
  it starts. The loop waits for that reply even if others are in, so a run is the same for a seed whatever the
  engine's number of worker threads, and it matches the synchronous runs' clock;
- in deployment (`order="real"`), the first that actually arrives; the clock then only estimates simulated time.
Each reply passes fedsim's reply checks and goes to the strategy's `apply_update`, with the model the client started
from and its staleness (versions applied since). A failed or rejected reply frees its slot and counts as an update.

The run's rows: one after every `concurrency` updates (about as much client work as a synchronous round with that
many clients), with the same central and federated evaluation, plus the updates' staleness. Checkpoints, at rows,
hold the clients in flight and the models they started from; a resumed run sends them again and goes on exactly as
the uninterrupted one (clients seed their work by the dispatch number, sent as the round).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from .clock import VirtualClock, message_bytes, sent_epochs
from .compression.message import is_compressed
from .grid.fedsim_grid import FedsimGrid
from .protocol.asynchronous import MODEL_VERSION_KEY, TrainsAsynchronously
from .protocol.keys import ARRAYS_RECORD, CONFIG_RECORD, ROUND_KEY

ORDERS = ("virtual", "real")
POLL_SECONDS = 0.002
_DRAW_TAG = 0xA51C  # keeps the client draw's stream apart from every other seeded draw


@dataclass
class Flight:
    """A client in training: its dispatch number (the round it is told), partition, the model version it started
    from, when it started and when its reply arrives on the virtual clock, and its message's id."""

    seq: int
    partition: int
    version: int
    started: float
    finish: float
    message_id: str = ""

    def as_list(self) -> list[Any]:
        return [self.seq, self.partition, self.version, self.started, self.finish]


class AsyncLoop:  # pylint: disable=too-many-instance-attributes
    """The state of an asynchronous run between rows: the global model and its version, the clients in flight and
    the models they started from, the clock, and the counts."""

    def __init__(self, strategy: TrainsAsynchronously, grid: FedsimGrid, clock: VirtualClock, *,
                 train_config: ConfigRecord, train_rows: Mapping[int, int], seed: int, timeout: float,
                 order: str = "virtual") -> None:
        if order not in ORDERS:
            raise ValueError(f"order={order!r}: one of {', '.join(ORDERS)}")
        self.strategy, self.grid, self.clock = strategy, grid, clock
        self.train_config, self.train_rows, self.seed = train_config, dict(train_rows), int(seed)
        self.timeout, self.order = float(timeout), order
        self.concurrency = int(strategy.concurrency)
        grid.norm_window = self.concurrency  # each reply's norm bound: against the last C accepted updates
        self.version = 0
        self.dispatched = 0
        self.updates = 0
        self.flights: list[Flight] = []
        self.models: dict[int, ArrayRecord] = {}
        self.staleness: list[int] = []  # of the updates since the last row
        self.applied = 0  # updates the strategy applied or buffered since the last row (valid replies)
        self.timed_out = 0  # clients that never replied, since the last row
        self._arrived: dict[str, Message] = {}
        self._pushed_at: dict[str, float] = {}
        self._predicted: dict[str, tuple[int, int]] = {}  # message id -> (samples, bytes down) of its prediction

    # --- the run -------------------------------------------------------------------------------------------------
    def run(self, arrays: ArrayRecord, *, first_row: int, num_rows: int,
            after_update_row: Callable[[int, ArrayRecord], None]) -> ArrayRecord:
        """Rows `first_row`..`num_rows` from the global model `arrays`; `after_update_row(row, arrays)` evaluates,
        records and checkpoints each row. Returns the final global model."""
        self.models.setdefault(self.version, arrays)
        self._send_again()
        for row in range(first_row, num_rows + 1):
            node_of = self._nodes()  # once a row: a deployed node that left stops being started
            while self.updates < row * self.concurrency:
                self._fill(arrays, node_of)
                flight, reply = self._next_reply()
                arrays = self._apply(flight, reply, arrays)
            after_update_row(row, arrays)
            self.staleness, self.applied, self.timed_out = [], 0, 0
        return arrays

    def row_scalars(self) -> dict[str, float]:
        """What the row adds to metrics.csv: the model version and its updates' staleness."""
        stale = self.staleness or [0]
        return {"model_version": float(self.version), "updates_applied": float(self.applied),
                "staleness_mean": float(np.mean(stale)), "staleness_max": float(np.max(stale)),
                "timed_out": float(self.timed_out)}

    # --- starting clients ----------------------------------------------------------------------------------------
    def _nodes(self) -> dict[int, int]:
        """Partition -> node id of the nodes the Grid lists."""
        return {self.grid.partition_of(node): node for node in self.grid.get_node_ids()}

    def _fill(self, arrays: ArrayRecord, node_of: Mapping[int, int]) -> None:
        while len(self.flights) < self.concurrency:
            busy = {flight.partition for flight in self.flights}
            idle = sorted(p for p in node_of if p not in busy)
            if not idle:
                return
            seq = self.dispatched + 1
            order = np.random.default_rng([self.seed, seq, _DRAW_TAG]).permutation(idle)
            # the first in a random order that is online (asked one by one: an availability draw is not free)
            partition = int(next((p for p in order if not self.clock.offline(int(p), seq)), order[0]))
            self.dispatched = seq
            message = self._message(seq, node_of[partition], self.version, arrays)
            flight = Flight(seq, partition, self.version, self.clock.now, 0.0)
            flight.finish = self.clock.now + self._predicted_seconds(partition, message)
            self._push(flight, message)
            self._predicted[flight.message_id] = (self._samples(partition, message), message_bytes(message))

    def _message(self, seq: int, node: int, version: int, arrays: ArrayRecord) -> Message:
        config = ConfigRecord(dict(self.train_config))
        config[ROUND_KEY] = seq
        config[MODEL_VERSION_KEY] = version
        config = self.strategy.configure_update(version, arrays, config)
        return Message(RecordDict({ARRAYS_RECORD: arrays, CONFIG_RECORD: config}), dst_node_id=node,
                       message_type=MessageType.TRAIN)

    def _predicted_seconds(self, partition: int, message: Message) -> float:
        """The call's simulated seconds, known at its start: the client's training rows times its epochs, the
        model both ways (a compressed reply's real size corrects it once it arrived: `_measure_arrived`)."""
        size = message_bytes(message)
        return self.clock.call_seconds(partition, self._samples(partition, message), size, size)

    def _samples(self, partition: int, message: Message) -> int:
        return self.train_rows.get(partition, 0) * sent_epochs(message, self.clock.local_epochs)

    def _measure_arrived(self) -> bool:
        """Correct the finish of each arrived compressed reply by its real upload size; whether any moved. (An
        uncompressed reply is the model's size, as predicted: its finish stays, bit for bit.)"""
        moved = False
        for flight in self.flights:
            reply = self._arrived.get(flight.message_id)
            if reply is None:
                continue
            known = self._predicted.pop(flight.message_id, None)
            if known is None or not is_compressed(reply):
                continue
            samples, down = known
            flight.finish = flight.started + self.clock.call_seconds(flight.partition, samples, down,
                                                                   message_bytes(reply))
            moved = True
        return moved

    def _push(self, flight: Flight, message: Message) -> None:
        self.models.setdefault(flight.version, message.content[ARRAYS_RECORD])
        (flight.message_id,) = list(self.grid.push_messages([message]))
        self._pushed_at[flight.message_id] = time.monotonic()
        self.flights.append(flight)

    def _send_again(self) -> None:
        """After a resume: the clients that were in flight at the checkpoint get their messages again."""
        node_of = self._nodes()
        waiting, self.flights = [f for f in self.flights if not f.message_id], [f for f in self.flights if f.message_id]
        for flight in waiting:
            if flight.partition in node_of:
                self._push(flight, self._message(flight.seq, node_of[flight.partition], flight.version,
                                                 self.models[flight.version]))

    # --- receiving and applying ----------------------------------------------------------------------------------
    def _next_reply(self) -> tuple[Flight, Message | None]:
        """The next reply to apply (virtual: the earliest on the clock; real: the first to arrive), waiting for it."""
        while True:
            if self.order == "virtual":
                flight = min(self.flights, key=lambda f: (f.finish, f.seq))
                if flight.message_id not in self._arrived:
                    self._pull()  # every reply outstanding: an in-process engine computes them as one batch
                    if self._measure_arrived():
                        continue  # a compressed upload arrives sooner than predicted: choose again
                candidates = [flight]
            else:
                self._pull()
                candidates = [f for f in self.flights if f.message_id in self._arrived]
            for flight in candidates:
                if flight.message_id in self._arrived:
                    return flight, self._arrived.pop(flight.message_id)
                if time.monotonic() - self._pushed_at[flight.message_id] > self.timeout:
                    return flight, None  # no reply within server.round_timeout: the slot is freed
            time.sleep(POLL_SECONDS)

    def _pull(self) -> None:
        waiting = [f.message_id for f in self.flights if f.message_id not in self._arrived]
        if waiting:
            for reply in self.grid.collect(waiting):
                self._arrived[reply.metadata.reply_to_message_id] = reply

    def _apply(self, flight: Flight, reply: Message | None, arrays: ArrayRecord) -> ArrayRecord:
        """Apply one reply (None: it never came); with real arrival order the clock's time is its estimate."""
        self.flights.remove(flight)
        self._pushed_at.pop(flight.message_id, None)
        self.clock.now = max(self.clock.now, flight.finish)
        self.updates += 1
        if reply is not None:
            (reply,) = self.grid.receive([reply])  # reply checks; the row's log
        if reply is None:
            self.timed_out += 1
        elif not reply.has_error():
            staleness = self.version - flight.version
            self.staleness.append(staleness)
            self.applied += 1
            updated = self.strategy.apply_update(arrays, self.models[flight.version], reply, staleness)
            if updated is not None:
                self.version += 1
                arrays = updated
                self.models[self.version] = arrays
        in_use = {f.version for f in self.flights} | {self.version}
        self.models = {v: model for v, model in self.models.items() if v in in_use}
        return arrays

    # --- checkpoints -----------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """What a checkpoint holds of the loop (plain data and records)."""
        return {"version": self.version, "dispatched": self.dispatched, "updates": self.updates,
                "now": self.clock.now, "flights": [f.as_list() for f in self.flights],
                "models": {int(v): model for v, model in self.models.items()},
                "norms": list(self.grid.recent_norms)}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from `state()`: the flights are sent again when the loop runs."""
        self.version, self.dispatched = int(state["version"]), int(state["dispatched"])
        self.updates, self.clock.now = int(state["updates"]), float(state["now"])
        self.flights = [Flight(int(s), int(p), int(v), float(a), float(b)) for s, p, v, a, b in state["flights"]]
        self.models = {int(v): model for v, model in state["models"].items()}
        self.grid.recent_norms.extend(float(norm) for norm in state.get("norms", []))
