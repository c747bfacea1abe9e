"""Node ordering: which nodes take part in a run, in partition order.

Node IDs are random on every engine, so the roster orders them by the partition id each node claimed at discovery
(`fedsim.grid.discovery`): a strategy's seeded `random.sample` over `get_node_ids()` then picks the same partitions
on every engine, and replies handed over in partition order sum in the same order whatever order a parallel
engine's replies arrived in. Nodes that were refused, or that appear after discovery, are never listed or sent
anything; the partitions in `excluded` (config `exclude_clients`) are hidden from strategies but still evaluated
at the end.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from flwr.app import Message
from flwr.proto.node_pb2 import NodeInfo  # pylint: disable=no-name-in-module
from flwr.serverapp import Grid

from .discovery import REFUSED, Outcome, discover_partitions
from .round_log import NodeRecord

logger = logging.getLogger("fedsim")

LATE = "appeared after node discovery: not part of this run"


class NodeRoster:
    """The accepted node of each partition, and every node the run saw (each refusal is logged once)."""

    def __init__(self, excluded: Iterable[int] = ()) -> None:
        self._excluded = {int(pid) for pid in excluded}
        self._partition_of: dict[int, int] = {}  # accepted nodes only
        self._seen: dict[int, NodeRecord] = {}  # every node discovery or a later listing saw
        self._warned: dict[int, str] = {}  # the last refusal reason logged per node
        self._fresh: list[NodeRecord] = []  # seen since the last `take_fresh()`
        self._discovered = False

    def discover(  # pylint: disable=too-many-arguments,too-many-positional-arguments
        self, grid: Grid, expected_nodes: int, timeout: float, poll_interval: float = 1.0, retry_interval: float = 10.0
    ) -> dict[int, int]:
        """Wait until every partition 0..expected_nodes-1 has an accepted node; return node id -> partition id.
        After `timeout` seconds without: a TimeoutError of one line naming the missing partitions and the
        refusals (the nodes seen are recorded either way)."""
        outcome, complete = discover_partitions(grid, expected_nodes, timeout, poll_interval, retry_interval,
                                                self._warn_refused)
        self._settle(outcome, complete)
        if not complete:
            raise TimeoutError(outcome.shortfall(expected_nodes, timeout))
        return dict(self._partition_of)

    def partition_of(self, node_id: int) -> int:
        """The partition of an accepted node; -1 for any other."""
        return self._partition_of.get(node_id, -1)

    def in_run(self, node_ids: Iterable[int]) -> list[int]:
        """The accepted nodes among `node_ids` (an engine's listing), excluded ones included, in partition order."""
        node_ids = list(node_ids)
        self._note_late(node_ids)
        return sorted((n for n in node_ids if n in self._partition_of), key=lambda n: (self._partition_of[n], n))

    def listed(self, node_ids: Iterable[int]) -> list[int]:
        """What a strategy may sample: `in_run` without the excluded partitions."""
        return [node_id for node_id in self.in_run(node_ids) if self.partition_of(node_id) not in self._excluded]

    def listed_nodes(self, nodes: Iterable[NodeInfo]) -> list[NodeInfo]:
        """`listed` for an engine's NodeInfos."""
        by_id = {node.node_id: node for node in nodes}
        return [by_id[node_id] for node_id in self.listed(by_id)]

    def addressed(self, messages: Iterable[Message]) -> list[Message]:
        """The messages addressed to accepted nodes: a refused or late node never hears from this run."""
        kept = []
        for message in messages:
            if message.metadata.dst_node_id in self._partition_of:
                kept.append(message)
            else:
                logger.warning("not sending a %s message to node %s: it is not part of this run",
                               message.metadata.message_type, message.metadata.dst_node_id)
        return kept

    def in_partition_order(self, replies: Iterable[Message]) -> list[Message]:
        return sorted(replies,
                      key=lambda reply: (self.partition_of(reply.metadata.src_node_id), reply.metadata.src_node_id))

    def take_fresh(self) -> list[NodeRecord]:
        """The nodes seen for the first time since the last call (round 0 of nodes.csv: discovery's)."""
        fresh, self._fresh = self._fresh, []
        return fresh

    def _settle(self, outcome: Outcome, complete: bool) -> None:
        """Fix the accepted nodes and record every node discovery saw."""
        self._partition_of = {node_id: partition for partition, node_id in outcome.holders.items()}
        records = outcome.records()
        self._seen.update((record.node_id, record) for record in records)
        for record in outcome.left.values():
            self._warn_refused(record)
        self._fresh.extend(records)
        self._discovered = complete

    def _warn_refused(self, record: NodeRecord) -> None:
        if self._warned.get(record.node_id) != record.reason:
            self._warned[record.node_id] = record.reason
            logger.warning("refused node %s: %s", record.node_id, record.reason)

    def _note_late(self, node_ids: Iterable[int]) -> None:
        """Record (once) the nodes that appeared after discovery."""
        if not self._discovered:
            return
        for node_id in node_ids:
            if node_id not in self._seen:
                record = NodeRecord(node_id, None, REFUSED, LATE)
                self._seen[node_id] = record
                self._fresh.append(record)
                self._warn_refused(record)
