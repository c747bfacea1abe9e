"""A Grid wrapper the ServerApp puts around whatever Grid the engine gives it.

It does two things no strategy should have to know about:
- it orders node IDs by partition id (learned once with a `query` message), so that a strategy's seeded
  `random.sample` over `get_node_ids()` picks the same partitions on every engine, where node IDs are random;
- it hands replies to the strategy sorted by partition id, so that float sums in aggregation run in the same order
  whatever order a parallel engine's replies arrived in;
- it keeps each round's per-client reply metrics, keyed by partition id, for the recorder.
- it hides the partitions in `excluded` (config `exclude_clients`) from `get_node_ids`/`get_nodes`, so no strategy
  ever samples them; `all_node_ids()` still lists every node;
- it checks every train/evaluate reply (`fedsim.reply_checks`) and hands the strategy an error reply in place of
  a bad one, and error replies only when fewer than `min_valid_replies` training replies are valid (the round is
  then skipped: the strategy aggregates nothing and the global model stays).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import Message, MessageType, RecordDict
from flwr.proto.node_pb2 import NodeInfo  # pylint: disable=no-name-in-module
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from .client import IDENTITY_RECORD, PARTITION_ID
from .reply_checks import REJECTED_PREFIX, SKIPPED_PREFIX, ReplyLimits, as_error, reply_problem

logger = logging.getLogger("fedsim")


@dataclass(frozen=True)
class Rejection:
    """A reply the server refused: from which partition and node, of which kind (train/evaluate), and why."""

    partition: int
    node_id: int
    kind: str
    reason: str


@dataclass
class RoundLog:
    """What came back from clients since the last `take_round_log()`: metrics per partition id, and failures."""

    train: dict[int, dict[str, float]] = field(default_factory=dict)
    evaluate: dict[int, dict[str, float]] = field(default_factory=dict)
    failures: list[tuple[int, str]] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    skipped: bool = False  # too few valid training replies: nothing was aggregated


class FedsimGrid(Grid):
    """Delegates to an engine's Grid; see the module docstring for what it adds."""

    def __init__(self, inner: Grid, excluded: Iterable[int] = (), limits: ReplyLimits | None = None) -> None:
        self._inner = inner
        self._excluded = {int(pid) for pid in excluded}
        self._limits = limits or ReplyLimits()
        self._partition_of: dict[int, int] = {}
        self._log = RoundLog()

    # --- node identity -------------------------------------------------------------------------------------
    def discover(self, expected_nodes: int, timeout: float, poll_interval: float = 1.0) -> dict[int, int]:
        """Wait for `expected_nodes` nodes, ask each for its partition id, and return node id -> partition id."""
        deadline = time.monotonic() + timeout
        while len(node_ids := list(self._inner.get_node_ids())) < expected_nodes:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(node_ids)} of {expected_nodes} nodes connected within {timeout:.0f} s")
            time.sleep(poll_interval)
        queries = [Message(RecordDict(), dst_node_id=node_id, message_type=MessageType.QUERY) for node_id in node_ids]
        replies = list(self._inner.send_and_receive(queries, timeout=timeout))
        for reply in replies:
            if reply.has_error():
                raise RuntimeError(f"node {reply.metadata.src_node_id} could not say its partition: {reply.error.reason}")
            identity = reply.content.config_records[IDENTITY_RECORD]
            self._partition_of[reply.metadata.src_node_id] = int(identity[PARTITION_ID])
        if len(self._partition_of) < expected_nodes:
            raise TimeoutError(f"only {len(self._partition_of)} of {expected_nodes} nodes answered the identity query")
        return dict(self._partition_of)

    def partition_of(self, node_id: int) -> int:
        return self._partition_of.get(node_id, -1)

    # --- node state (checkpoints) ----------------------------------------------------------------------
    def node_states(self) -> dict | None:
        """The engine's node states if it keeps them in this process (in-process engine), else None."""
        export = getattr(self._inner, "node_states", None)
        return export() if export is not None else None

    def restore_node_states(self, states: dict | None) -> None:
        restore = getattr(self._inner, "restore_node_states", None)
        if states is not None and restore is not None:
            restore(states)

    # --- Grid interface ------------------------------------------------------------------------------------
    def set_run(self, run: Run) -> None:
        self._inner.set_run(run)

    @property
    def run(self) -> Run:
        return self._inner.run

    def create_message(  # pylint: disable=too-many-arguments,too-many-positional-arguments
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return self._inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def all_node_ids(self) -> list[int]:
        """Every node, excluded ones included, in partition order."""
        node_ids = list(self._inner.get_node_ids())
        return sorted(node_ids, key=lambda node_id: (self._partition_of.get(node_id, len(self._partition_of)), node_id))

    def get_node_ids(self) -> Iterable[int]:
        return [node_id for node_id in self.all_node_ids() if self.partition_of(node_id) not in self._excluded]

    def get_nodes(self) -> Iterable[NodeInfo]:
        return [node for node in self._inner.get_nodes() if self.partition_of(node.node_id) not in self._excluded]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = self.check_replies(self._in_partition_order(self._inner.pull_messages(message_ids)), {})
        self._observe(replies)
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        sent = list(messages)
        replies = self._in_partition_order(self._inner.send_and_receive(sent, timeout=timeout))
        replies = self.check_replies(replies, {message.metadata.message_id: message for message in sent})
        self._observe(replies)
        return replies

    def _in_partition_order(self, replies: Iterable[Message]) -> list[Message]:
        return sorted(replies, key=lambda reply: (self.partition_of(reply.metadata.src_node_id), reply.metadata.src_node_id))

    # --- reply checks --------------------------------------------------------------------------------------
    def check_replies(self, replies: list[Message], sent: dict[str, Message]) -> list[Message]:
        """Replies with every bad one replaced by an error reply; all errors if too few training replies are valid."""
        checked = []
        for reply in replies:
            partition = self.partition_of(reply.metadata.src_node_id)
            problem = reply_problem(reply, sent.get(reply.metadata.reply_to_message_id), self._limits, partition)
            if problem is None:
                checked.append(reply)
                continue
            kind = reply.metadata.message_type.split(".")[0]
            self._log.rejections.append(Rejection(partition, reply.metadata.src_node_id, kind, problem))
            logger.warning("rejected the %s reply of partition %s (node %s): %s", kind, partition, reply.metadata.src_node_id, problem)
            checked.append(as_error(reply, REJECTED_PREFIX + problem))
        train = [r for r in checked if r.metadata.message_type.split(".")[0] == MessageType.TRAIN]
        valid = [r for r in train if not r.has_error()]
        if train and len(valid) < self._limits.min_valid_replies:
            reason = f"{len(valid)} valid training replies < server.min_valid_replies = {self._limits.min_valid_replies}"
            logger.warning("%s%s; the global model is kept", SKIPPED_PREFIX, reason)
            self._log.skipped = True
            valid_ids = {id(r) for r in valid}
            checked = [as_error(r, SKIPPED_PREFIX + reason) if id(r) in valid_ids else r for r in checked]
        return checked

    # --- reply log -----------------------------------------------------------------------------------------
    def _observe(self, replies: list[Message]) -> None:
        for reply in replies:
            partition = self.partition_of(reply.metadata.src_node_id)
            if reply.has_error():
                if not str(reply.error.reason).startswith((REJECTED_PREFIX, SKIPPED_PREFIX)):  # logged already
                    self._log.failures.append((partition, str(reply.error.reason)))
                continue
            kind = reply.metadata.message_type.split(".")[0]
            target = {MessageType.TRAIN: self._log.train, MessageType.EVALUATE: self._log.evaluate}.get(kind)
            if target is None:
                continue
            metrics: dict[str, float] = defaultdict(float)
            for record in reply.content.metric_records.values():
                metrics.update({k: v for k, v in record.items() if isinstance(v, (int, float))})
            target[partition] = dict(metrics)

    def take_round_log(self) -> RoundLog:
        log, self._log = self._log, RoundLog()
        return log
