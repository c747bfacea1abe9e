"""The in-process engine: a Flower Grid that calls the ClientApp directly, in this process.

No Ray, no SuperLink state, no protobuf: a message goes from the strategy to `ClientApp.__call__` as a Python
object, and the reply comes straight back. Each node keeps its own Context (state persists across rounds).
With `engine.workers` > 1 a round's calls run in that many threads, each with an equal share of the CPU cores for
PyTorch's own (intra-op) threads: small models on a few cores train faster side by side than one at a time on all
cores. A client's result does not depend on which thread runs it or when, and replies keep the messages' order.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from numbers import Integral
from typing import Any
from uuid import uuid4

import torch
from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from torch import nn

from ..protocol.constraints import Interval, Options
from ..protocol.keys import NUM_PARTITIONS, PARTITION_ID
from .base import Engine

logger = logging.getLogger(__name__)

RUN_ID = 1
FIRST_NODE_ID = 1001
AUTO = "auto"
NOT_REACHED = "the round timeout (server.round_timeout) passed before this node's turn"
_RANDOM_LAYERS = (nn.modules.dropout._DropoutNd, nn.RReLU)  # pylint: disable=protected-access


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and `taskset` narrow)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return max(os.cpu_count() or 1, 1)


def random_layers(model: nn.Module) -> list[str]:
    """Layers that draw from PyTorch's global generator in training (Dropout, RReLU): shared by every thread, so
    with several workers what each client draws would depend on timing."""
    return sorted({type(module).__name__ for module in model.modules() if isinstance(module, _RANDOM_LAYERS)})


def resolve_workers(workers: int | str, device: str = AUTO, model: Callable[[], nn.Module] | None = None) -> int:
    """`engine.workers`: an integer as given; `auto` is one per usable core on CPU, and 1 on a GPU (kernels on one
    device queue behind each other; the vectorized engine is the way to fill a GPU) or for a model with random
    layers (so that runs stay reproducible). `model` builds the experiment's model, only when it has to be looked at."""
    if workers != AUTO:
        return max(int(workers), 1)
    if device == "cuda" or (device == AUTO and torch.cuda.is_available()):
        return 1
    drawing = random_layers(model()) if model is not None else []
    if drawing:
        logger.warning("engine=inprocess: one worker, since the model's %s layers draw from PyTorch's global "
                       "generator (set engine.workers to run clients side by side anyway)", ", ".join(drawing))
        return 1
    return usable_cores()


@contextmanager
def torch_threads_per_worker(workers: int) -> Iterator[None]:
    """While the engine runs, give each worker thread an equal share of the cores for PyTorch's intra-op threads."""
    if workers <= 1:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(usable_cores() // workers, 1))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class InProcessGrid(Grid):
    """A Grid whose nodes are ClientApp calls in this process; node FIRST_NODE_ID + i holds partition i."""

    def __init__(self, client_app: ClientApp, num_nodes: int, run_id: int = RUN_ID, workers: int = 1,
                 node_config_extras: Mapping[int, Mapping[str, Any]] | None = None) -> None:
        self._client_app = client_app
        self._run = Run.create_empty(run_id)
        extras = node_config_extras or {}  # partition -> more node-config entries, as a SuperNode's --node-config
        self._contexts = {
            FIRST_NODE_ID + pid: Context(
                run_id=run_id,
                node_id=FIRST_NODE_ID + pid,
                node_config={PARTITION_ID: pid, NUM_PARTITIONS: num_nodes, **extras.get(pid, {})},
                state=RecordDict(),
                run_config={},
            )
            for pid in range(num_nodes)
        }
        self._pending: dict[str, Message] = {}
        self.workers = max(int(workers), 1)

    def set_run(self, run: Run) -> None:
        self._run = run

    def node_states(self) -> dict[int, RecordDict]:
        """Each node's persistent state (what a ClientApp keeps in `context.state`), for checkpoints."""
        return {node_id: context.state for node_id, context in self._contexts.items()}

    def restore_node_states(self, states: dict[int, RecordDict]) -> None:
        for node_id, state in states.items():
            if node_id in self._contexts:
                self._contexts[node_id].state = state

    @property
    def run(self) -> Run:
        return self._run

    def create_message(  # pylint: disable=too-many-arguments,too-many-positional-arguments
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._contexts)

    def _accept(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = uuid4().hex
            self._pending[message.metadata.message_id] = message
            ids.append(message.metadata.message_id)
        return ids

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Queue the messages: they run when their replies are pulled."""
        return self._accept(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """The replies to the queued messages among `message_ids`, their ClientApp calls shared out to the worker
        threads as one batch (in order, as a round's): an asynchronous run pulls only when the reply it needs next
        is missing, and then has every client started since computed side by side."""
        queued = [self._pending.pop(mid) for mid in list(message_ids) if mid in self._pending]
        if self.workers == 1 or len(queued) <= 1:
            return [self._deliver(message) for message in queued]
        return _RoundCalls(queued, self._deliver, min(self.workers, len(queued))).replies(None)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Every message's reply, in the messages' order. Without a timeout and with one worker the calls run in
        this thread; otherwise in worker threads, and a node whose call had not ended (or begun) when `timeout`
        seconds passed gets an error reply saying so: a real grid would just not hear back."""
        queued = [self._pending.pop(mid) for mid in self._accept(messages)]
        if timeout is None and (self.workers == 1 or len(queued) <= 1):
            return [self._deliver(message) for message in queued]
        return _RoundCalls(queued, self._deliver, min(self.workers, len(queued))).replies(timeout)

    def _deliver(self, message: Message) -> Message:
        """Run the ClientApp on the message; an exception (out-of-memory included) becomes an error reply, as
        Flower's runtimes do."""
        context = self._contexts.get(message.metadata.dst_node_id)
        if context is None:
            return Message(Error(ErrorCode.UNKNOWN, f"no node {message.metadata.dst_node_id}"), reply_to=message)
        try:
            reply = self._client_app(message, context)
        except BaseException as error:  # pylint: disable=broad-exception-caught
            reason = f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=3)}"
            return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=message)
        reply.metadata.__dict__["_message_id"] = uuid4().hex
        return reply


class _RoundCalls:
    """One round's ClientApp calls shared out to worker threads, each taking the next message in order.

    A call still running at the deadline cannot be killed: its thread is left behind (a daemon) and its late reply
    is dropped; messages no worker had taken by then are not started.
    """

    def __init__(self, messages: list[Message], deliver: Callable[[Message], Message], workers: int) -> None:
        self._messages = messages
        self._deliver = deliver
        self._workers = workers
        self._lock = threading.Lock()
        self._next = 0
        self._closed = False
        self._started: set[int] = set()
        self._replies: dict[int, Message] = {}

    def replies(self, timeout: float | None) -> list[Message]:
        deadline = None if timeout is None else time.monotonic() + timeout
        threads = [threading.Thread(target=self._work, name=f"clientapp-worker-{i}", daemon=True)
                   for i in range(self._workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(None if deadline is None else max(deadline - time.monotonic(), 0.0))
        with self._lock:
            self._closed = True
            replies, started = dict(self._replies), set(self._started)
        return [replies[i] if i in replies else self._missing(i, i in started, timeout)
                for i in range(len(self._messages))]

    def _work(self) -> None:
        while True:
            with self._lock:
                if self._closed or self._next >= len(self._messages):
                    return
                index = self._next
                self._next += 1
                self._started.add(index)
            reply = self._deliver(self._messages[index])
            with self._lock:
                if not self._closed:
                    self._replies[index] = reply

    def _missing(self, index: int, started: bool, timeout: float | None) -> Message:
        reason = (f"no reply within the round timeout ({timeout:.1f} s of server.round_timeout)" if started
                  else NOT_REACHED)
        return Message(Error(ErrorCode.REPLY_MESSAGE_UNAVAILABLE, reason), reply_to=self._messages[index])


class InProcessEngine(Engine):
    """Single-process simulation, `workers` ClientApp calls at a time: the fastest engine on CPU, and with one
    worker the easiest to debug."""

    name = "inprocess"
    _parameter_constraints = {"workers": [Options({AUTO}), Interval(Integral, 1, None, closed="left")]}

    def __init__(self, workers: int | str = 1, device: str = AUTO,
                 model: Callable[[], nn.Module] | None = None) -> None:
        self.workers = resolve_workers(workers, device, model)
        # Tests: partition -> extra node-config entries (e.g. a node told to `misbehave`); no config key sets it.
        self.node_config_extras: dict[int, dict[str, Any]] = {}

    @classmethod
    def from_config(cls, arguments: Mapping[str, Any], device: str = AUTO,
                    model: Callable[[], nn.Module] | None = None) -> InProcessEngine:
        """`workers: auto` settles on the experiment's device and model."""
        return cls(**arguments, device=device, model=model)

    def run(self, server_app: ServerApp, client_app: ClientApp, num_nodes: int) -> None:
        grid = InProcessGrid(client_app, num_nodes, workers=self.workers, node_config_extras=self.node_config_extras)
        # Messages take their run and sender from the process's task identity, as under Flower's runtimes.
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, RUN_ID, SUPERLINK_NODE_ID
        context = Context(run_id=RUN_ID, node_id=0, node_config={}, state=RecordDict(), run_config={})
        with torch_threads_per_worker(self.workers):
            server_app(grid, context)
