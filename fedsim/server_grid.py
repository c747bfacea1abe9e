"""A Grid wrapper the ServerApp puts around whatever Grid the engine gives it.

It does these things no strategy should have to know about:
- node discovery (`discover`): it asks every node its partition id once, with a `query` message, and accepts one
  node per partition 0..num_clients-1; every other node (a claim out of range or against its registered name, a
  second claimant, a failed query, a node that appears later) is refused, logged and never listed or sent anything;
- it orders node IDs by partition id, so that a strategy's seeded `random.sample` over `get_node_ids()` picks the
  same partitions on every engine, where node IDs are random;
- it hands replies to the strategy sorted by partition id, so that float sums in aggregation run in the same order
  whatever order a parallel engine's replies arrived in;
- it keeps each round's per-client reply metrics, keyed by partition id, and the nodes it saw, for the recorder.
- it hides the partitions in `excluded` (config `exclude_clients`) from `get_node_ids`/`get_nodes`, so no strategy
  ever samples them; `all_node_ids()` still lists every accepted node;
- it checks every train/evaluate reply (`fedsim.reply_checks`; the relative update-norm bound needs the whole batch,
  so it runs here) and hands the strategy an error reply in place of a bad one, and error replies only when fewer
  than `min_valid_replies` training replies are valid (the round is then skipped: the strategy aggregates nothing
  and the global model stays).
"""

from __future__ import annotations

import logging
import re
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
from flwr.app import Message, MessageType, RecordDict
from flwr.proto.node_pb2 import NodeInfo  # pylint: disable=no-name-in-module
from flwr.serverapp import Grid

from .client import IDENTITY_RECORD, PARTITION_ID
from .grid_wrapper import GridWrapper
from .reply_checks import REJECTED_PREFIX, SKIPPED_PREFIX, ReplyLimits, as_error, check_reply, outsized_updates

logger = logging.getLogger("fedsim")

ACCEPTED, REFUSED = "accepted", "refused"
# `flwr supernode register KEY.pub CONNECTION --name node-<i>`: fedsim's certificates name node i's key `node-<i>`.
REGISTERED_NAME = re.compile(r"^node-(\d+)$")
LATE = "appeared after node discovery: not part of this run"
LISTED = 10  # missing partitions and refusals spelled out in a discovery timeout's one line
# How long one identity query waits for its replies. A reply can be lost (a SuperLink overloaded by many nodes on
# one host answered its push with an error), so a node that has not answered by then is asked again, like a
# refused one, rather than holding up discovery until its deadline.
QUERY_TIMEOUT = 60.0
WAITING_NOTICE = 30.0  # seconds between the "waiting for nodes" lines while discovery waits


@dataclass(frozen=True)
class Rejection:
    """A reply the server refused: from which partition and node, of which kind (train/evaluate), and why."""

    partition: int
    node_id: int
    kind: str
    reason: str


@dataclass(frozen=True)
class NodeRecord:
    """A node the server saw: the partition it claimed (None: it named none), accepted or refused, and why."""

    node_id: int
    partition: int | None
    status: str
    reason: str = ""


@dataclass
class RoundLog:
    """What came back from clients since the last `take_round_log()`: metrics per partition id, failures, and the
    nodes seen for the first time."""

    train: dict[int, dict[str, float]] = field(default_factory=dict)
    evaluate: dict[int, dict[str, float]] = field(default_factory=dict)
    failures: list[tuple[int, str]] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    skipped: bool = False  # too few valid training replies: nothing was aggregated
    nodes: list[NodeRecord] = field(default_factory=list)


class FedsimGrid(GridWrapper):
    """Delegates to an engine's Grid; see the module docstring for what it adds."""

    def __init__(self, inner: Grid, excluded: Iterable[int] = (), limits: ReplyLimits | None = None) -> None:
        super().__init__(inner)
        self._excluded = {int(pid) for pid in excluded}
        self._limits = limits or ReplyLimits()
        self._partition_of: dict[int, int] = {}  # accepted nodes only
        self._seen: dict[int, NodeRecord] = {}  # every node discovery or a later listing saw
        self._warned: dict[int, str] = {}  # the last refusal reason logged per node (each is logged once)
        self._discovered = False
        self._log = RoundLog()

    # --- node identity -------------------------------------------------------------------------------------
    def discover(self, expected_nodes: int, timeout: float, poll_interval: float = 1.0,
                 retry_interval: float = 10.0) -> dict[int, int]:
        """Wait until every partition 0..expected_nodes-1 has an accepted node; return node id -> partition id.

        Each new node is asked its partition id. It is refused when the query fails, when it claims a partition
        outside the range or one its registered name (`node-<k>`) does not allow, or when another node holds the
        partition by a better right: registered under that partition's name, else registered earlier, else the
        lower node id. Refused nodes are asked again every `retry_interval` seconds while discovery waits, since a
        SuperNode restarted with a corrected --node-config keeps its node id. After `timeout` seconds without
        every partition held: a TimeoutError of one line naming the missing partitions and the refusals.
        """
        deadline = time.monotonic() + timeout
        claims: dict[int, int] = {}  # node -> partition, for the nodes whose claim is admissible
        refused: dict[int, NodeRecord] = {}  # nodes whose query failed or whose claim is not admissible
        asked_at: dict[int, float] = {}
        next_notice = time.monotonic() + WAITING_NOTICE
        while True:
            present = list(self._inner.get_node_ids())
            info = {node.node_id: node for node in self._inner.get_nodes()}
            now = time.monotonic()
            ask = [n for n in present if n not in asked_at or (n in refused and now - asked_at[n] >= retry_interval)]
            if ask:
                wait = min(max(deadline - now, poll_interval), QUERY_TIMEOUT)
                for node_id, answer in self._ask_partitions(ask, wait).items():
                    asked_at[node_id] = now
                    claims.pop(node_id, None)
                    refused.pop(node_id, None)
                    partition, problem = _judge_claim(answer, expected_nodes, info.get(node_id))
                    if problem is None:
                        claims[node_id] = partition
                    else:
                        refused[node_id] = NodeRecord(node_id, partition, REFUSED, problem)
            holders, outranked = _resolve(claims, set(present), info)
            for record in (*refused.values(), *outranked.values()):
                self._warn_refused(record)
            if len(holders) == expected_nodes:  # every claim is in 0..expected_nodes-1: each partition is held
                self._settle(holders, {**refused, **outranked}, claims)
                return dict(self._partition_of)
            if time.monotonic() >= next_notice:  # a long wait says what it waits for
                next_notice = time.monotonic() + WAITING_NOTICE
                missing = [p for p in range(expected_nodes) if p not in holders]
                logger.warning("waiting for nodes: %d of %d partitions have a node (%d nodes connected); missing "
                               "partitions: %s; giving up in %.0f s", len(holders), expected_nodes, len(present),
                               _listing(missing), max(deadline - time.monotonic(), 0.0))
            if time.monotonic() >= deadline:
                self._settle(holders, {**refused, **outranked}, claims, done=False)
                missing = [p for p in range(expected_nodes) if p not in holders]
                refusals = [f"node {r.node_id} ({r.reason})" for r in sorted({**refused, **outranked}.values(),
                                                                                  key=lambda r: r.node_id)]
                raise TimeoutError(
                    f"node discovery gave up after {timeout:.0f} s: {len(holders)} of {expected_nodes} partitions have "
                    f"a node ({len(present)} nodes connected); missing partitions: {_listing(missing)}; "
                    f"refused: {_listing(refusals) or 'none'}")
            time.sleep(poll_interval)

    def _ask_partitions(self, node_ids: list[int], timeout: float) -> dict[int, int | str]:
        """Each node's claimed partition id, or why it has none (one line)."""
        answers: dict[int, int | str] = {n: f"no answer to the identity query within {timeout:.0f} s" for n in node_ids}
        queries = [Message(RecordDict(), dst_node_id=node_id, message_type=MessageType.QUERY) for node_id in node_ids]
        for reply in self._inner.send_and_receive(queries, timeout=timeout):
            node_id = reply.metadata.src_node_id
            if node_id not in answers:
                continue
            if reply.has_error():
                answers[node_id] = f"its identity query failed: {_first_line(str(reply.error.reason))}"
                continue
            try:
                value = reply.content.config_records[IDENTITY_RECORD][PARTITION_ID]
            except (KeyError, TypeError, AttributeError) as error:
                answers[node_id] = f"its identity reply holds no '{PARTITION_ID}' ({type(error).__name__})"
                continue
            partition = _whole_number(value)
            answers[node_id] = partition if partition is not None else f"{PARTITION_ID}={value!r} is not a whole number"
        return answers

    def _settle(self, holders: Mapping[int, int], refusals: Mapping[int, NodeRecord], claims: Mapping[int, int],
                done: bool = True) -> None:
        """Fix the accepted nodes and put every node discovery saw into the round log (round 0 of nodes.csv)."""
        self._partition_of = {node_id: partition for partition, node_id in holders.items()}
        records = [NodeRecord(node_id, partition, ACCEPTED) for partition, node_id in sorted(holders.items())]
        left = {node_id: NodeRecord(node_id, partition, REFUSED, "left before node discovery ended")
                for node_id, partition in claims.items() if node_id not in self._partition_of and node_id not in refusals}
        records += sorted({**left, **refusals}.values(), key=lambda record: record.node_id)
        for record in records:
            self._seen[record.node_id] = record
        for record in left.values():
            self._warn_refused(record)
        self._log.nodes.extend(records)
        self._discovered = done

    def _warn_refused(self, record: NodeRecord) -> None:
        if self._warned.get(record.node_id) != record.reason:
            self._warned[record.node_id] = record.reason
            logger.warning("refused node %s: %s", record.node_id, record.reason)

    def _note_late(self, node_ids: Iterable[int]) -> None:
        """Record (once) the nodes that appeared after discovery; they are never listed or sent anything."""
        if not self._discovered:
            return
        for node_id in node_ids:
            if node_id not in self._seen:
                record = NodeRecord(node_id, None, REFUSED, LATE)
                self._seen[node_id] = record
                self._log.nodes.append(record)
                self._warn_refused(record)

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

    # --- Grid interface (set_run, run and create_message pass through: GridWrapper) -----------------------------
    def all_node_ids(self) -> list[int]:
        """Every accepted node the engine still lists, excluded ones included, in partition order."""
        node_ids = list(self._inner.get_node_ids())
        self._note_late(node_ids)
        return sorted((n for n in node_ids if n in self._partition_of), key=lambda n: (self._partition_of[n], n))

    def get_node_ids(self) -> Iterable[int]:
        return [node_id for node_id in self.all_node_ids() if self.partition_of(node_id) not in self._excluded]

    def get_nodes(self) -> Iterable[NodeInfo]:
        nodes = list(self._inner.get_nodes())
        self._note_late(node.node_id for node in nodes)
        kept = [node for node in nodes if node.node_id in self._partition_of and self.partition_of(node.node_id) not in self._excluded]
        return sorted(kept, key=lambda node: (self._partition_of[node.node_id], node.node_id))

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._inner.push_messages(self._to_accepted(messages))

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = self.check_replies(self._in_partition_order(self._inner.pull_messages(message_ids)), {})
        self._observe(replies)
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        sent = self._to_accepted(messages)
        replies = self._in_partition_order(self._inner.send_and_receive(sent, timeout=timeout))
        replies = self.check_replies(replies, {message.metadata.message_id: message for message in sent})
        self._observe(replies)
        return replies

    def _to_accepted(self, messages: Iterable[Message]) -> list[Message]:
        """The messages addressed to accepted nodes: a refused or late node never hears from this run."""
        kept = []
        for message in messages:
            if message.metadata.dst_node_id in self._partition_of:
                kept.append(message)
            else:
                logger.warning("not sending a %s message to node %s: it is not part of this run",
                               message.metadata.message_type, message.metadata.dst_node_id)
        return kept

    def _in_partition_order(self, replies: Iterable[Message]) -> list[Message]:
        return sorted(replies, key=lambda reply: (self.partition_of(reply.metadata.src_node_id), reply.metadata.src_node_id))

    # --- reply checks --------------------------------------------------------------------------------------
    def check_replies(self, replies: list[Message], sent: dict[str, Message]) -> list[Message]:
        """Replies with every bad one replaced by an error reply; all errors if too few training replies are valid."""
        references: dict[int, np.ndarray] = {}  # the sent arrays' values, decoded once per batch
        verdicts = [check_reply(reply, sent.get(reply.metadata.reply_to_message_id), self._limits,
                                self.partition_of(reply.metadata.src_node_id), references) for reply in replies]
        factor = self._limits.update_norm_factor
        if factor is not None:  # norms are only measured for finite, well-shaped training replies
            measured = [i for i, (problem, norm) in enumerate(verdicts) if problem is None and norm is not None]
            norms = [float(verdicts[i][1]) for i in measured]  # type: ignore[arg-type]
            for i, problem in zip(measured, outsized_updates(norms, factor), strict=True):
                if problem is not None:
                    verdicts[i] = (problem, verdicts[i][1])
        checked = []
        for reply, (problem, _) in zip(replies, verdicts, strict=True):
            partition = self.partition_of(reply.metadata.src_node_id)
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


# --- discovery rules -----------------------------------------------------------------------------------------

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
            outranked[node_id] = NodeRecord(node_id, partition, REFUSED, f"partition-id={partition} is held by node {winner} ({why})")
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


def _listing(items: list) -> str:
    shown = ", ".join(str(item) for item in items[:LISTED])
    return shown + (f" and {len(items) - LISTED} more" if len(items) > LISTED else "")
