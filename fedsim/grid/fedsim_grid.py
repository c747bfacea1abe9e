"""`FedsimGrid`: the Grid a strategy sees, the engine's Grid behind node ordering, reply filtering and a round log.

A strategy lists nodes and exchanges messages as with any Grid; it sees only the accepted nodes, in partition
order (`fedsim.grid.nodes`), and each batch of replies in partition order and filtered (`fedsim.grid.filtering`).
The server takes the round's log (`fedsim.grid.round_log`) after each central evaluation. Compressed train
replies are decoded (`fedsim.compression.message`) before they are checked, and the bytes the engine moved each way
are counted under everything else (`fedsim.grid.traffic`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping

from flwr.app import Message
from flwr.proto.node_pb2 import NodeInfo  # pylint: disable=no-name-in-module
from flwr.serverapp import Grid

from ..clock import VirtualClock, clocked_round, is_training
from ..compression.base import Compressor
from ..compression.message import decompress_reply
from ..reply_checks import ReplyLimits
from .filtering import filter_replies
from .nodes import NodeRoster
from .round_log import RoundLog
from .traffic import CountingGrid
from .wrapper import GridWrapper


class FedsimGrid(GridWrapper):
    """Delegates to an engine's Grid; `set_run`, `run` and `create_message` pass through unchanged."""

    def __init__(self, inner: Grid, excluded: Iterable[int] = (), limits: ReplyLimits | None = None,
                 clock: VirtualClock | None = None, compressor: Compressor | None = None) -> None:
        super().__init__(CountingGrid(inner))
        self._traffic: CountingGrid = self._inner
        self._roster = NodeRoster(excluded)
        self._limits = limits or ReplyLimits()
        self._log = RoundLog()
        self.clock = clock  # times each synchronous training exchange (`fedsim.clock`)
        self.compressor = compressor  # decodes compressed train replies (None: the experiment compresses none)
        self._pushed: dict[str, Message] = {}  # pushed messages whose replies were not pulled yet
        # An asynchronous run checks replies one by one: the norms of the last `norm_window` accepted updates stand
        # in for the rest of a batch in the relative norm bound (0: a synchronous run, batches are whole rounds).
        self.norm_window = 0
        self.recent_norms: deque[float] = deque()

    @property
    def inner(self) -> Grid:
        """The engine's Grid (what checkpoints ask for node state), not the byte counter around it."""
        return self._traffic.inner

    def take_traffic(self) -> tuple[int, int]:
        """(bytes sent to clients, bytes received from them) since the last call (`fedsim.grid.traffic`)."""
        return self._traffic.take()

    def discover(self, expected_nodes: int, timeout: float, poll_interval: float = 1.0,
                 retry_interval: float = 10.0) -> dict[int, int]:
        """Node discovery on the engine's Grid (`NodeRoster.discover`): node id -> partition id."""
        return self._roster.discover(self._inner, expected_nodes, timeout, poll_interval, retry_interval)

    def partition_of(self, node_id: int) -> int:
        return self._roster.partition_of(node_id)

    def all_node_ids(self) -> list[int]:
        """Every accepted node the engine still lists, excluded ones included, in partition order."""
        return self._roster.in_run(self._inner.get_node_ids())

    def get_node_ids(self) -> Iterable[int]:
        return self._roster.listed(self._inner.get_node_ids())

    def get_nodes(self) -> Iterable[NodeInfo]:
        return self._roster.listed_nodes(self._inner.get_nodes())

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        sent = self._roster.addressed(messages)
        ids = list(self._inner.push_messages(sent))  # it gives each message its id
        self._pushed.update({message.metadata.message_id: message for message in sent})
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """The replies that have arrived, checked against the messages they answer."""
        return self.receive(self.collect(message_ids))

    def collect(self, message_ids: Iterable[str]) -> list[Message]:
        """The replies that have arrived, unchecked and unlogged: the asynchronous loop takes each in when it
        applies it (`receive`), so that the round log does not depend on when replies happened to arrive."""
        return list(self._inner.pull_messages(message_ids))

    def receive(self, replies: Iterable[Message]) -> list[Message]:
        """Collected replies, checked against the messages they answer and logged."""
        replies = list(replies)
        sent = {reply.metadata.reply_to_message_id: self._pushed.pop(reply.metadata.reply_to_message_id)
                for reply in replies if reply.metadata.reply_to_message_id in self._pushed}
        return self._received(replies, sent)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        sent = self._roster.addressed(messages)
        if self.clock is not None and is_training(sent):
            replies = clocked_round(self.clock, sent, self.partition_of,
                                    lambda reached: list(self._inner.send_and_receive(reached, timeout=timeout)))
        else:
            replies = self._inner.send_and_receive(sent, timeout=timeout)  # it gives each message its id
        return self._received(replies, {message.metadata.message_id: message for message in sent})

    def check_replies(self, replies: list[Message], sent: Mapping[str, Message]) -> list[Message]:
        """`replies` filtered (`fedsim.grid.filtering`); their rejections and a skipped round go to the log."""
        if not self.norm_window:
            filtered = filter_replies(replies, sent, self._limits, self.partition_of, decode=self._decode)
        else:
            filtered = filter_replies(replies, sent, self._limits, self.partition_of, list(self.recent_norms), 1,
                                      decode=self._decode)
            self.recent_norms.extend(filtered.norms)
            while len(self.recent_norms) > self.norm_window:
                self.recent_norms.popleft()
        self._log.rejections += filtered.rejections
        self._log.skipped = self._log.skipped or filtered.skipped
        return filtered.replies

    def _decode(self, reply: Message, sent: Message | None) -> Message:
        return decompress_reply(reply, sent, self.compressor)

    def take_round_log(self) -> RoundLog:
        """What came back since the last call, and the nodes seen for the first time."""
        log, self._log = self._log, RoundLog()
        log.nodes = self._roster.take_fresh()
        return log

    def _received(self, replies: Iterable[Message], sent: Mapping[str, Message]) -> list[Message]:
        received = self._roster.in_partition_order(replies)
        handed = self.check_replies(received, sent)
        self._log.add_replies(received, handed, self.partition_of)
        return handed
