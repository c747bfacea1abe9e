"""The in-process engine: a Flower Grid that calls the ClientApp directly, in this process, one node at a time.

No Ray, no SuperLink state, no protobuf: a message goes from the strategy to `ClientApp.__call__` as a Python
object, and the reply comes straight back. Each node keeps its own Context (state persists across rounds).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterable
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
            if deadline is not None and time.monotonic() > deadline:
                continue  # like a real grid after its timeout: no reply from this node
            replies.append(self._deliver(message))
        return replies

    def _deliver(self, message: Message) -> Message:
        """Run the ClientApp on the message; an exception becomes an error reply, as Flower's runtimes do."""
        context = self._contexts.get(message.metadata.dst_node_id)
        if context is None:
            return Message(Error(ErrorCode.UNKNOWN, f"no node {message.metadata.dst_node_id}"), reply_to=message)
        try:
            reply = self._client_app(message, context)
        except Exception as error:  # pylint: disable=broad-exception-caught
            reason = f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=3)}"
            return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=message)
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
