"""Node discovery: only one node per partition 0..num_clients-1 is accepted; every other node is refused, logged,
recorded in nodes.csv, and never listed to a strategy or sent anything.

A fake inner Grid stands in for the engine: each node answers the identity query from a table (a partition id, an
error, or a reply without one) and `get_nodes` gives the registration info the Deployment Runtime gives (the name
an operator registered the node's key under, and when).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.proto.node_pb2 import NodeInfo  # pylint: disable=no-name-in-module
from flwr.serverapp.strategy import FedAvg

from fedsim.engines.inprocess import InProcessGrid
from fedsim.grid.discovery import QUERY_TIMEOUT
from fedsim.grid.fedsim_grid import FedsimGrid
from fedsim.grid.nodes import LATE
from fedsim.recorder import NODES_FILE, Recorder, RoundRecord

from .conftest import set_task_identity

set_task_identity()  # messages built here need a sender

EARLY, LATER = "2026-01-05T10:00:00+00:00", "2026-01-05T10:00:09+00:00"


class FakeGrid(InProcessGrid):
    """Nodes from a table node id -> answers to the identity query, in order (the last one repeats): a partition
    id, an error reason (str), or None (a reply without a partition id). `joining` adds nodes at the n-th
    `get_node_ids` call. Every message a node receives is kept in `received`. Messages travel as on the in-process
    engine; only the nodes and their answers are the table's."""

    def __init__(self, answers: dict[int, list], info: dict[int, tuple[str, str]] | None = None,
                 joining: dict[int, dict[int, list]] | None = None) -> None:
        super().__init__(ClientApp(), num_nodes=0, run_id=1)
        self.answers = {node: list(replies) for node, replies in answers.items()}
        self.info = info or {}
        self.joining = joining or {}
        self.listings = 0
        self.received: list[tuple[int, str]] = []

    def get_node_ids(self) -> Iterable[int]:
        self.listings += 1
        self.answers.update(self.joining.pop(self.listings, {}))
        return list(self.answers)

    def get_nodes(self) -> Iterable[NodeInfo]:
        return [NodeInfo(node_id=node, name=self.info.get(node, ("", ""))[0],
                         registered_at=self.info.get(node, ("", ""))[1])
                for node in self.answers]

    def _deliver(self, message: Message) -> Message:
        node = message.metadata.dst_node_id
        self.received.append((node, message.metadata.message_type))
        if message.metadata.message_type != MessageType.QUERY:
            return Message(RecordDict({"metrics": MetricRecord({"num-examples": 1})}), reply_to=message)
        replies = self.answers[node]
        answer = replies.pop(0) if len(replies) > 1 else replies[0]
        if isinstance(answer, str):
            return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, answer), reply_to=message)
        identity = ConfigRecord({} if answer is None else {"partition-id": answer})
        return Message(RecordDict({"identity": identity}), reply_to=message)

    def got(self, node: int, kind: str | None = None) -> bool:
        return any(n == node and (kind is None or k == kind) for n, k in self.received)


def _discover(fake: FakeGrid, clients: int = 3, **kwargs) -> tuple[FedsimGrid, dict[int, int]]:
    grid = FedsimGrid(fake)
    kwargs = {"timeout": 5.0, "poll_interval": 0.01, **kwargs}
    return grid, grid.discover(clients, **kwargs)


def _refusals(grid: FedsimGrid) -> dict[int, str]:
    return {r.node_id: r.reason for r in grid.take_round_log().nodes if r.status == "refused"}


def test_one_node_per_partition_is_accepted_in_partition_order():
    fake = FakeGrid({30: [2], 10: [0], 20: [1]})
    grid, accepted = _discover(fake)
    assert accepted == {10: 0, 20: 1, 30: 2}
    assert grid.get_node_ids() == [10, 20, 30] and grid.all_node_ids() == [10, 20, 30]
    assert [node.node_id for node in grid.get_nodes()] == [10, 20, 30]
    log = grid.take_round_log()
    assert [(r.node_id, r.partition, r.status, r.reason) for r in log.nodes] == [
        (10, 0, "accepted", ""), (20, 1, "accepted", ""), (30, 2, "accepted", "")]


def test_a_partition_out_of_range_is_refused():
    fake = FakeGrid({10: [0], 20: [1], 30: [2], 40: [3], 50: [-1]})
    grid, accepted = _discover(fake)
    assert accepted == {10: 0, 20: 1, 30: 2}
    assert _refusals(grid) == {40: "partition-id=3 is outside 0..2 (num_clients=3)",
                               50: "partition-id=-1 is outside 0..2 (num_clients=3)"}


def test_of_two_unregistered_claimants_the_lower_node_id_keeps_the_partition():
    fake = FakeGrid({22: [0], 21: [0], 30: [1], 40: [2]})
    grid, accepted = _discover(fake)
    assert accepted == {21: 0, 30: 1, 40: 2}
    assert _refusals(grid) == {22: "partition-id=0 is held by node 21 (lower node id)"}


def test_the_earliest_registered_claimant_keeps_the_partition():
    fake = FakeGrid({41: [0], 42: [0], 30: [1], 50: [2]}, info={41: ("", LATER), 42: ("", EARLY)})
    grid, accepted = _discover(fake)
    assert accepted == {42: 0, 30: 1, 50: 2}
    assert _refusals(grid) == {41: "partition-id=0 is held by node 42 (registered earlier)"}


def test_a_registered_name_binds_a_node_to_its_partition():
    # 61 is registered as node-0 but later than 62 (no name): the name wins; 63 (node-2) claims 1: refused.
    fake = FakeGrid({61: [0], 62: [0], 63: [1], 64: [1], 65: [2]},
                    info={61: ("node-0", LATER), 62: ("", EARLY), 63: ("node-2", EARLY), 65: ("node-2", LATER)})
    grid, accepted = _discover(fake)
    assert accepted == {61: 0, 64: 1, 65: 2}
    assert _refusals(grid) == {62: "partition-id=0 is held by node 61 (registered as node-0)",
                               63: "registered as node-2 but claims partition-id=1"}


def test_a_failed_identity_query_refuses_that_node_and_discovery_goes_on(caplog):
    fake = FakeGrid({10: [0], 20: ["fedsim node 20: error: no 'partition-id'\nTraceback ..."], 30: [None], 40: [1]},
                    joining={3: {50: [2]}})  # partition 2's node connects while discovery waits
    with caplog.at_level(logging.WARNING, logger="fedsim"):
        grid, accepted = _discover(fake)
    assert accepted == {10: 0, 40: 1, 50: 2}
    refusals = _refusals(grid)
    assert refusals[20] == "its identity query failed: fedsim node 20: error: no 'partition-id'"
    assert refusals[30] == "its identity reply holds no 'partition-id' (KeyError)"
    assert "refused node 20: its identity query failed" in caplog.text


def test_a_refused_node_restarted_with_a_corrected_config_is_asked_again_and_accepted():
    fake = FakeGrid({10: [0], 20: ["no partition-id", 1], 30: [7, 2]})  # the second answer follows a restart
    grid, accepted = _discover(fake, retry_interval=0.0)
    assert accepted == {10: 0, 20: 1, 30: 2}
    assert _refusals(grid) == {}


def test_a_lost_identity_reply_is_asked_again_instead_of_holding_discovery_to_its_deadline():
    """A reply the SuperLink lost (it answered the node's push with an error) never comes: each query waits at most
    QUERY_TIMEOUT, and the silent node is asked again."""

    class LosingGrid(FakeGrid):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.waits: list[float | None] = []
            self.lost = 0

        def send_and_receive(self, messages, *, timeout=None):
            self.waits.append(timeout)
            replies = super().send_and_receive(messages, timeout=timeout)
            if self.lost == 0:  # node 20's first reply goes missing
                self.lost += 1
                return [reply for reply in replies if reply.metadata.src_node_id != 20]
            return replies

    fake = LosingGrid({10: [0], 20: [1], 30: [2]})
    grid, accepted = _discover(fake, timeout=3600.0, retry_interval=0.0)
    assert accepted == {10: 0, 20: 1, 30: 2}
    assert fake.waits == [QUERY_TIMEOUT, QUERY_TIMEOUT] and QUERY_TIMEOUT < 3600
    assert _refusals(grid) == {}


def test_a_long_wait_for_nodes_says_which_partitions_are_missing(caplog, monkeypatch):
    import fedsim.grid.discovery

    monkeypatch.setattr(fedsim.grid.discovery, "WAITING_NOTICE", 0.05)
    fake = FakeGrid({1: [0]}, joining={30: {2: [2]}})  # partition 1 never gets a node
    with caplog.at_level(logging.WARNING, logger="fedsim"), pytest.raises(TimeoutError):
        _discover(fake, timeout=0.5)
    notices = [r.getMessage() for r in caplog.records if r.getMessage().startswith("waiting for nodes")]
    assert notices and "1 of 3 partitions have a node (1 nodes connected); missing partitions: 1, 2;" in notices[0]
    assert "2 of 3 partitions have a node (2 nodes connected); missing partitions: 1;" in notices[-1]


def test_discovery_waits_for_every_partition_not_for_a_node_count():
    """Three nodes for three clients, but two claim partition 0: partition 2 has no node. One line says so."""
    fake = FakeGrid({1: [0], 2: [0], 3: [1], 4: ["boom"]})
    with pytest.raises(TimeoutError) as raised:
        _discover(fake, timeout=0.2)
    message = str(raised.value)
    assert "\n" not in message
    assert "2 of 3 partitions have a node (4 nodes connected); missing partitions: 2;" in message
    assert ("refused: node 2 (partition-id=0 is held by node 1 (lower node id)), "
            "node 4 (its identity query failed: boom)") in message


def test_refused_late_and_surplus_nodes_are_never_listed_nor_sent_anything(caplog):
    fake = FakeGrid({10: [0], 20: [1], 30: [2], 31: [2], 99: [5]}, joining={2: {77: [1]}})
    grid, accepted = _discover(fake)
    assert accepted == {10: 0, 20: 1, 30: 2}
    assert _refusals(grid) == {31: "partition-id=2 is held by node 30 (lower node id)",
                               99: "partition-id=5 is outside 0..2 (num_clients=3)"}
    fake.answers[88] = [0]  # appears after discovery, claiming a partition already held (77 joins at the next listing)
    with caplog.at_level(logging.WARNING, logger="fedsim"):
        for _ in range(3):
            assert grid.get_node_ids() == [10, 20, 30]
            assert grid.all_node_ids() == [10, 20, 30]
            assert [node.node_id for node in grid.get_nodes()] == [10, 20, 30]
    late = grid.take_round_log().nodes
    assert [(r.node_id, r.partition, r.status, r.reason) for r in late] == [(88, None, "refused", LATE),
                                                                            (77, None, "refused", LATE)]
    assert caplog.text.count(f"refused node 88: {LATE}") == caplog.text.count(f"refused node 77: {LATE}") == 1

    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=1, min_evaluate_nodes=1,
                      min_available_nodes=1)
    arrays = ArrayRecord([np.zeros(2, dtype=np.float32)])
    for messages in (strategy.configure_train(1, arrays, ConfigRecord(), grid),
                     strategy.configure_evaluate(1, arrays, ConfigRecord(), grid)):
        grid.send_and_receive(list(messages))
    stray = Message(RecordDict({"config": ConfigRecord()}), dst_node_id=31, message_type=MessageType.TRAIN)
    grid.send_and_receive([stray])  # even a message addressed to a refused node by hand is not sent
    grid.push_messages([Message(RecordDict({"config": ConfigRecord()}), dst_node_id=88,
                                message_type=MessageType.TRAIN)])
    for node in (10, 20, 30):
        assert fake.got(node, MessageType.TRAIN) and fake.got(node, MessageType.EVALUATE)
    for node in (31, 99):  # refused at discovery: asked who they are, nothing else
        assert {kind for n, kind in fake.received if n == node} == {MessageType.QUERY}
    assert not fake.got(88) and not fake.got(77)


def test_in_process_nodes_carry_no_registration_info_and_have_no_duplicates():
    from fedsim.client import app as client_app
    from fedsim.engines.inprocess import InProcessGrid

    inner = InProcessGrid(client_app, 4)
    assert {(node.name, node.registered_at) for node in inner.get_nodes()} == {("", "")}
    grid = FedsimGrid(inner)
    assert grid.discover(4, timeout=30) == {1001: 0, 1002: 1, 1003: 2, 1004: 3}
    assert _refusals(grid) == {}


def _nodes_csv(run_dir) -> list[dict[str, str]]:
    with open(run_dir / NODES_FILE, newline="") as stream:
        return list(csv.DictReader(stream))


def test_refusals_land_in_nodes_csv_and_a_resumed_run_keeps_them(tmp_path):
    fake = FakeGrid({10: [0], 20: [1], 21: [1], 30: [2], 40: ["boom"]}, info={21: ("node-1", LATER)})
    grid, _ = _discover(fake)
    recorder = Recorder(tmp_path, {"seed": 0}, 3, {})
    recorder.record_round(RoundRecord(0, 0.1, 2.3, nodes=grid.take_round_log().nodes))
    fake.answers[50] = [0]
    grid.get_node_ids()  # a node appears while round 1 samples its clients
    recorder.record_round(RoundRecord(1, 0.5, 1.0, nodes=grid.take_round_log().nodes))
    recorder.record_round(RoundRecord(2, 0.6, 0.9, nodes=grid.take_round_log().nodes))
    expected = [
        {"node_id": "10", "partition": "0", "status": "accepted", "reason": "", "round": "0"},
        {"node_id": "21", "partition": "1", "status": "accepted", "reason": "", "round": "0"},
        {"node_id": "30", "partition": "2", "status": "accepted", "reason": "", "round": "0"},
        {"node_id": "20", "partition": "1", "status": "refused",
         "reason": "partition-id=1 is held by node 21 (registered as node-1)", "round": "0"},
        {"node_id": "40", "partition": "", "status": "refused", "reason": "its identity query failed: boom",
         "round": "0"},
        {"node_id": "50", "partition": "", "status": "refused", "reason": LATE, "round": "1"},
    ]
    assert _nodes_csv(tmp_path) == expected

    resumed = Recorder(tmp_path, {"seed": 0}, 3, {})  # a restart: the checkpoint's state, then discovery again
    resumed.restore(recorder.state())
    again, _ = _discover(FakeGrid({10: [0], 20: [1], 21: [1], 30: [2], 40: ["boom"]}, info={21: ("node-1", LATER)}))
    resumed.record_round(RoundRecord(3, 0.7, 0.8, nodes=again.take_round_log().nodes))
    assert _nodes_csv(tmp_path) == expected  # the same nodes: no new rows
