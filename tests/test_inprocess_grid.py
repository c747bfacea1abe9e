"""The in-process Grid delivers Flower Messages to a ClientApp in this process, with per-node contexts."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedsim.engines import InProcessEngine, InProcessGrid


def _toy_client_app() -> ClientApp:
    """Replies with arrays = partition id + round-trip counter kept in the node's context state."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        if pid == 3:
            raise RuntimeError("client 3 always fails")
        calls = int(context.state.config_records.get("calls", ConfigRecord({"n": 0}))["n"]) + 1
        context.state["calls"] = ConfigRecord({"n": calls})
        received = next(iter(msg.content["arrays"].values())).numpy()
        arrays = ArrayRecord([received + pid])
        metrics = MetricRecord({"num-examples": pid + 1, "calls": calls})
        return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)

    return app


def _start(grid: Grid) -> None:
    """Messages need a task identity, which an engine sets before the ServerApp runs."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1


def test_messages_reach_each_node_with_its_partition_and_state():
    grid = InProcessGrid(_toy_client_app(), num_nodes=4)
    _start(grid)
    nodes = list(grid.get_node_ids())
    assert len(nodes) == 4
    content = RecordDict({"arrays": ArrayRecord([np.zeros(2)]), "config": ConfigRecord()})
    for expected_calls in (1, 2):
        messages = [Message(content, dst_node_id=node, message_type=MessageType.TRAIN) for node in nodes]
        replies = list(grid.send_and_receive(messages))
        assert len(replies) == 4
        by_node = {reply.metadata.src_node_id: reply for reply in replies}
        for pid, node in enumerate(nodes):
            reply = by_node[node]
            if pid == 3:  # an exception in the ClientApp becomes an error reply, the others go on
                assert reply.has_error() and "client 3 always fails" in reply.error.reason
                continue
            assert reply.metadata.reply_to_message_id != ""
            np.testing.assert_array_equal(next(iter(reply.content["arrays"].values())).numpy(), [pid, pid])
            assert reply.content["metrics"]["calls"] == expected_calls  # node state persists across rounds


def test_push_then_pull_returns_replies_once():
    grid = InProcessGrid(_toy_client_app(), num_nodes=2)
    _start(grid)
    content = RecordDict({"arrays": ArrayRecord([np.ones(2)]), "config": ConfigRecord()})
    ids = list(grid.push_messages([Message(content, dst_node_id=n, message_type=MessageType.TRAIN) for n in grid.get_node_ids()]))
    assert len(ids) == 2 and len(set(ids)) == 2
    assert len(list(grid.pull_messages(ids))) == 2
    assert list(grid.pull_messages(ids)) == []


def test_flower_fedavg_runs_on_the_inprocess_engine():
    """Flower's own FedAvg, untouched, averages the toy replies weighted by num-examples."""
    server = ServerApp()
    outcome = {}

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=3)
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord([np.zeros(2)]), num_rounds=1)
        outcome["w"] = next(iter(result.arrays.values())).numpy()

    InProcessEngine().run(server, _toy_client_app(), num_nodes=3)
    # partitions 0, 1, 2 reply w = pid with weights pid + 1: (0*1 + 1*2 + 2*3) / 6
    np.testing.assert_allclose(outcome["w"], [8 / 6, 8 / 6])
