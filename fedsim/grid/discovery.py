"""Node discovery: ask each node its partition id and settle which node holds each partition 0..num_clients-1.

Each new node is asked once, with a `query` message. Its claim is refused when the query fails, when the partition
is outside the range, or when its registered name (`node-<k>`, fedsim's certificates name node k's key so) binds it
to another partition. Of several admissible claimants of one partition the one registered under that partition's
name keeps it, else the one registered earlier, else the lower node id. Refused nodes are asked again every
`retry_interval` seconds while discovery waits, since a SuperNode restarted with a corrected --node-config keeps
its node id.
"""

from __future__ import annotations

import logging
import re
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

from flwr.app import Message, MessageType, RecordDict
from flwr.proto.node_pb2 import NodeInfo  # pylint: disable=no-name-in-module
from flwr.serverapp import Grid

from ..protocol.keys import IDENTITY_RECORD, PARTITION_ID
from .round_log import NodeRecord

logger = logging.getLogger("fedsim")

ACCEPTED, REFUSED = "accepted", "refused"
REGISTERED_NAME = re.compile(r"^node-(\d+)$")
LEFT = "left before node discovery ended"
LISTED = 10  # missing partitions and refusals spelled out in a discovery timeout's one line
# How long one identity query waits for its replies. A reply can be lost (a SuperLink overloaded by many nodes on
# one host answered its push with an error), so a node that has not answered by then is asked again, like a
# refused one, rather than holding up discovery until its deadline.
QUERY_TIMEOUT = 60.0
WAITING_NOTICE = 30.0  # seconds between the "waiting for nodes" lines while discovery waits


@dataclass(frozen=True)
class Outcome:
    """Where discovery stopped: the node holding each partition, the refused claimants, the nodes whose admissible
    claim lapsed because they left, and how many nodes were connected."""

    holders: dict[int, int]  # partition -> node id
    refusals: dict[int, NodeRecord]  # node id -> refusal
    left: dict[int, NodeRecord]
    connected: int

    def records(self) -> list[NodeRecord]:
        """Every node discovery saw: the accepted ones in partition order, then the refused ones by node id."""
        accepted = [NodeRecord(node_id, partition, ACCEPTED) for partition, node_id in sorted(self.holders.items())]
        return accepted + sorted({**self.left, **self.refusals}.values(), key=lambda record: record.node_id)

    def shortfall(self, expected_nodes: int, timeout: float) -> str:
        """One line: which partitions have no node after `timeout` seconds, and which nodes were refused."""
        refusals = [f"node {r.node_id} ({r.reason})" for r in sorted(self.refusals.values(), key=lambda r: r.node_id)]
        return (f"node discovery gave up after {timeout:.0f} s: {len(self.holders)} of {expected_nodes} partitions "
                f"have a node ({self.connected} nodes connected); missing partitions: "
                f"{_listing(_missing(self.holders, expected_nodes))}; refused: {_listing(refusals) or 'none'}")


def discover_partitions(  # pylint: disable=too-many-arguments,too-many-positional-arguments
    grid: Grid, expected_nodes: int, timeout: float, poll_interval: float, retry_interval: float,
    warn: Callable[[NodeRecord], None],
) -> tuple[Outcome, bool]:
    """Ask and settle until every partition has a node (True) or `timeout` seconds have passed (False); `warn`
    hears each refusal every time discovery finds it."""
    return _Discovery(grid, expected_nodes, time.monotonic() + timeout, poll_interval, retry_interval).run(warn)


class _Discovery:  # pylint: disable=too-few-public-methods
    """One discovery's state: admissible claims, refused nodes, and when each node was last asked."""

    def __init__(  # pylint: disable=too-many-arguments,too-many-positional-arguments
        self, grid: Grid, expected_nodes: int, deadline: float, poll_interval: float, retry_interval: float
    ) -> None:
        self.grid, self.expected_nodes, self.deadline = grid, expected_nodes, deadline
        self.poll_interval, self.retry_interval = poll_interval, retry_interval
        self.claims: dict[int, int] = {}  # node -> partition, for the nodes whose claim is admissible
        self.refused: dict[int, NodeRecord] = {}  # nodes whose query failed or whose claim is not admissible
        self.asked_at: dict[int, float] = {}

    def run(self, warn: Callable[[NodeRecord], None]) -> tuple[Outcome, bool]:
        next_notice = time.monotonic() + WAITING_NOTICE
        while True:
            present = list(self.grid.get_node_ids())
            info = {node.node_id: node for node in self.grid.get_nodes()}
            self._ask(present, info)
            holders, outranked = _resolve(self.claims, set(present), info)
            outcome = self._outcome(holders, {**self.refused, **outranked}, len(present))
            for record in outcome.refusals.values():
                warn(record)
            if len(holders) == self.expected_nodes:  # every claim is in 0..expected_nodes-1: each partition is held
                return outcome, True
            if time.monotonic() >= next_notice:  # a long wait says what it waits for
                next_notice = time.monotonic() + WAITING_NOTICE
                self._notice(outcome)
            if time.monotonic() >= self.deadline:
                return outcome, False
            time.sleep(self.poll_interval)

    def _ask(self, present: list[int], info: Mapping[int, NodeInfo]) -> None:
        """Ask the nodes not asked yet, and the refused ones not asked for `retry_interval` seconds."""
        now = time.monotonic()
        ask = [n for n in present
               if n not in self.asked_at or (n in self.refused and now - self.asked_at[n] >= self.retry_interval)]
        if not ask:
            return
        wait = min(max(self.deadline - now, self.poll_interval), QUERY_TIMEOUT)
        for node_id, answer in _ask_partitions(self.grid, ask, wait).items():
            self.asked_at[node_id] = now
            self.claims.pop(node_id, None)
            self.refused.pop(node_id, None)
            partition, problem = _judge_claim(answer, self.expected_nodes, info.get(node_id))
            if problem is None:
                self.claims[node_id] = partition  # type: ignore[assignment]  # an admissible claim names one
            else:
                self.refused[node_id] = NodeRecord(node_id, partition, REFUSED, problem)

    def _outcome(self, holders: dict[int, int], refusals: dict[int, NodeRecord], connected: int) -> Outcome:
        held = set(holders.values())
        left = {node_id: NodeRecord(node_id, partition, REFUSED, LEFT) for node_id, partition in self.claims.items()
                if node_id not in held and node_id not in refusals}
        return Outcome(holders, refusals, left, connected)

    def _notice(self, outcome: Outcome) -> None:
        logger.warning("waiting for nodes: %d of %d partitions have a node (%d nodes connected); missing "
                       "partitions: %s; giving up in %.0f s", len(outcome.holders), self.expected_nodes,
                       outcome.connected, _listing(_missing(outcome.holders, self.expected_nodes)),
                       max(self.deadline - time.monotonic(), 0.0))


def _ask_partitions(grid: Grid, node_ids: list[int], timeout: float) -> dict[int, int | str]:
    """Each node's claimed partition id, or why it has none (one line)."""
    answers: dict[int, int | str] = {n: f"no answer to the identity query within {timeout:.0f} s" for n in node_ids}
    queries = [Message(RecordDict(), dst_node_id=node_id, message_type=MessageType.QUERY) for node_id in node_ids]
    for reply in grid.send_and_receive(queries, timeout=timeout):
        if reply.metadata.src_node_id in answers:
            answers[reply.metadata.src_node_id] = _answer(reply)
    return answers


def _answer(reply: Message) -> int | str:
    if reply.has_error():
        return f"its identity query failed: {_first_line(str(reply.error.reason))}"
    try:
        value = reply.content.config_records[IDENTITY_RECORD][PARTITION_ID]
    except (KeyError, TypeError, AttributeError) as error:
        return f"its identity reply holds no '{PARTITION_ID}' ({type(error).__name__})"
    partition = _whole_number(value)
    return partition if partition is not None else f"{PARTITION_ID}={value!r} is not a whole number"


# --- the rules -------------------------------------------------------------------------------------------------

def _judge_claim(answer: int | str, expected_nodes: int, info: NodeInfo | None) -> tuple[int | None, str | None]:
    """(claimed partition or None, why the claim is refused or None)."""
    if isinstance(answer, str):
        return None, answer
    if not 0 <= answer < expected_nodes:
        return answer, f"partition-id={answer} is outside 0..{expected_nodes - 1} (num_clients={expected_nodes})"
    bound = _registered_partition(info)
    if bound is not None and bound != answer:
        return answer, f"registered as node-{bound} but claims partition-id={answer}"
    return answer, None


def _resolve(claims: Mapping[int, int], present: set[int],
             info: Mapping[int, NodeInfo]) -> tuple[dict[int, int], dict[int, NodeRecord]]:
    """(partition -> the connected node that keeps it, node -> refusal of every other claimant)."""
    claimants: dict[int, list[int]] = defaultdict(list)
    for node_id, partition in claims.items():
        if node_id in present:
            claimants[partition].append(node_id)
    holders, outranked = {}, {}
    for partition, nodes in claimants.items():
        ranked = sorted(nodes, key=lambda node_id: _rank(node_id, partition, info))
        holders[partition] = winner = ranked[0]
        for node_id in ranked[1:]:
            why = _why_ahead(_rank(winner, partition, info), _rank(node_id, partition, info), partition)
            reason = f"partition-id={partition} is held by node {winner} ({why})"
            outranked[node_id] = NodeRecord(node_id, partition, REFUSED, reason)
    return holders, outranked


def _rank(node_id: int, partition: int, info: Mapping[int, NodeInfo]) -> tuple[bool, bool, float, int]:
    """Sort key among the claimants of `partition`: bound to it by its registered name, then registered earlier
    (unknown times last), then the lower node id."""
    node = info.get(node_id)
    registered = _registered_time(node)
    return _registered_partition(node) != partition, registered is None, registered or 0.0, node_id


def _why_ahead(winner: tuple[bool, bool, float, int], loser: tuple[bool, bool, float, int], partition: int) -> str:
    if winner[0] != loser[0]:
        return f"registered as node-{partition}"
    if winner[1:3] != loser[1:3]:
        return "registered earlier"
    return "lower node id"


def _registered_partition(node: NodeInfo | None) -> int | None:
    match = REGISTERED_NAME.match(getattr(node, "name", "") or "")
    return int(match[1]) if match else None


def _registered_time(node: NodeInfo | None) -> float | None:
    text = getattr(node, "registered_at", "") or ""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


def _whole_number(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    return None


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "(no reason given)"


def _missing(holders: Mapping[int, int], expected_nodes: int) -> list[int]:
    return [partition for partition in range(expected_nodes) if partition not in holders]


def _listing(items: list) -> str:
    shown = ", ".join(str(item) for item in items[:LISTED])
    return shown + (f" and {len(items) - LISTED} more" if len(items) > LISTED else "")
