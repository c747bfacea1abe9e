"""The in-process engine: a Flower Grid that calls the ClientApp directly, in this process, one node at a time.

No Ray, no SuperLink state, no protobuf: a message goes from the strategy to `ClientApp.__call__` as a Python
object, and the reply comes straight back. Each node keeps its own Context (state persists across rounds).
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Iterable
from typing import Any
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from ..client import NUM_PARTITIONS, PARTITION_ID
from .base import Engine

RUN_ID = 1
FIRST_NODE_ID = 1001


class InProcessGrid(Grid):
    """A Grid whose nodes are ClientApp calls in this process; node FIRST_NODE_ID + i holds partition i."""

    def __init__(self, client_app: ClientApp, num_nodes: int, run_id: int = RUN_ID) -> None:
        self._client_app = client_app
        self._run = Run.create_empty(run_id)
        self._contexts = {
            FIRST_NODE_ID + pid: Context(
                run_id=run_id,
                node_id=FIRST_NODE_ID + pid,
                node_config={PARTITION_ID: pid, NUM_PARTITIONS: num_nodes},
                state=RecordDict(),
                run_config={},
            )
            for pid in range(num_nodes)
        }
        self._pending: dict[str, Message] = {}

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

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = uuid4().hex
            self._pending[message.metadata.message_id] = message
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._deliver(self._pending.pop(mid)) for mid in list(message_ids) if mid in self._pending]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        deadline = None if timeout is None else time.monotonic() + timeout
        replies = []
        for message_id in list(self.push_messages(messages)):
            message = self._pending.pop(message_id)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:  # a real grid would just not hear back; say why instead
                reason = "the round timeout (server.round_timeout) passed before this node's turn"
                replies.append(Message(Error(ErrorCode.REPLY_MESSAGE_UNAVAILABLE, reason), reply_to=message))
                continue
            replies.append(self._deliver(message, remaining))
        return replies

    def _deliver(self, message: Message, timeout: float | None = None) -> Message:
        """Run the ClientApp on the message; an exception (out-of-memory included) becomes an error reply, as
        Flower's runtimes do, and so does a call still running after `timeout` seconds: the node is reported and
        left out of the round, and the run goes on (the call itself cannot be killed; its late reply is dropped)."""
        context = self._contexts.get(message.metadata.dst_node_id)
        if context is None:
            return Message(Error(ErrorCode.UNKNOWN, f"no node {message.metadata.dst_node_id}"), reply_to=message)
        outcome: dict[str, Any] = {}

        def call() -> None:
            try:
                outcome["reply"] = self._client_app(message, context)
            except BaseException as error:  # pylint: disable=broad-exception-caught
                outcome["error"] = f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=3)}"

        if timeout is None:
            call()
        else:
            worker = threading.Thread(target=call, name=f"clientapp-{message.metadata.dst_node_id}", daemon=True)
            worker.start()
            worker.join(timeout)
            if worker.is_alive():
                reason = f"no reply within the round timeout ({timeout:.1f} s left of server.round_timeout)"
                return Message(Error(ErrorCode.REPLY_MESSAGE_UNAVAILABLE, reason), reply_to=message)
        if "reply" not in outcome:
            return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, outcome.get("error", "no reply")), reply_to=message)
        reply = outcome["reply"]
        reply.metadata.__dict__["_message_id"] = uuid4().hex
        return reply


class InProcessEngine(Engine):
    """Sequential, single-process simulation: the fastest engine on CPU and the easiest to debug."""

    name = "inprocess"

    def run(self, server_app: ServerApp, client_app: ClientApp, num_nodes: int) -> None:
        grid = InProcessGrid(client_app, num_nodes)
        # Messages take their run and sender from the process's task identity, as under Flower's runtimes.
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, RUN_ID, SUPERLINK_NODE_ID
        context = Context(run_id=RUN_ID, node_id=0, node_config={}, state=RecordDict(), run_config={})
        server_app(grid, context)
