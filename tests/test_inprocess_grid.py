"""The in-process Grid delivers Flower Messages to a ClientApp in this process, with per-node contexts."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedsim.engines import InProcessEngine, InProcessGrid
from fedsim.engines.inprocess import random_layers, resolve_workers, torch_threads_per_worker, usable_cores

from .conftest import messages_to, read_metrics, set_task_identity


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


@pytest.mark.parametrize("workers", [1, 2])
def test_messages_reach_each_node_with_its_partition_and_state(workers):
    grid = InProcessGrid(_toy_client_app(), num_nodes=4, workers=workers)
    set_task_identity()
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
    set_task_identity()
    content = RecordDict({"arrays": ArrayRecord([np.ones(2)]), "config": ConfigRecord()})
    ids = list(grid.push_messages([Message(content, dst_node_id=n, message_type=MessageType.TRAIN)
                                   for n in grid.get_node_ids()]))
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


def _sleepy_client_app(log: list[tuple[str, int, float]], seconds: float) -> ClientApp:
    """Sleeps `seconds` per call (partition 2 hangs for 30 s) and logs when each call began and ended."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        log.append(("start", pid, time.monotonic()))
        time.sleep(30 if pid == 2 and seconds < 0 else abs(seconds))
        log.append(("end", pid, time.monotonic()))
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": pid + 1})}), reply_to=msg)

    return app


def _most_at_once(log: list[tuple[str, int, float]]) -> int:
    running = most = 0
    for event, _, _ in sorted(log, key=lambda entry: entry[2]):
        running += 1 if event == "start" else -1
        most = max(most, running)
    return most


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_workers_run_that_many_calls_at_once_and_replies_keep_the_message_order(workers):
    log: list[tuple[str, int, float]] = []
    grid = InProcessGrid(_sleepy_client_app(log, 0.2), num_nodes=6, workers=workers)
    messages = messages_to(grid.get_node_ids(), content=RecordDict({"config": ConfigRecord()}))
    started = time.monotonic()
    replies = list(grid.send_and_receive(messages, timeout=60))
    elapsed = time.monotonic() - started
    assert [reply.metadata.reply_to_message_id for reply in replies] == [m.metadata.message_id for m in messages]
    assert [reply.content["metrics"]["num-examples"] for reply in replies] == [1, 2, 3, 4, 5, 6]
    assert _most_at_once(log) == workers
    assert elapsed >= 0.2 * -(-6 // workers) - 0.05  # ceil(6 / workers) calls in a row, at least


def test_with_workers_a_hung_call_costs_only_its_own_node():
    """Partition 2 hangs past the timeout: the other worker answers every other node; node 2 gets an error reply."""
    log: list[tuple[str, int, float]] = []
    grid = InProcessGrid(_sleepy_client_app(log, -0.05), num_nodes=6, workers=2)
    messages = messages_to(grid.get_node_ids(), content=RecordDict({"config": ConfigRecord()}))
    replies = list(grid.send_and_receive(messages, timeout=2.0))
    assert [reply.has_error() for reply in replies] == [False, False, True, False, False, False]
    assert "no reply within the round timeout" in replies[2].error.reason


def test_resolve_workers():
    assert resolve_workers(3) == 3 and resolve_workers(0) == 1
    assert resolve_workers("auto", "cpu") == usable_cores()
    if not torch.cuda.is_available():
        assert resolve_workers("auto", "auto") == usable_cores()


def test_torch_threads_are_shared_out_while_the_engine_runs_and_restored_after():
    before = torch.get_num_threads()
    with torch_threads_per_worker(2):
        assert torch.get_num_threads() == max(usable_cores() // 2, 1)
    assert torch.get_num_threads() == before


def test_worker_count_does_not_change_results(run_quietly):
    """Each client trains with its own seeded data order, on one intra-op thread whenever there are at least as many
    workers as cores, so the metrics are bitwise equal whatever the order the calls ran in; one worker uses every
    core per client: equal up to float rounding."""
    overrides = ("num_rounds=2", "num_clients=6", "seed=5", "strategy=fedprox", "stragglers.fraction=0.5")
    counts = (1, max(usable_cores(), 2), max(usable_cores(), 2) + 1)
    runs = [read_metrics(run_quietly(*overrides, f"engine.workers={workers}", name=f"w{workers}")[1])
            for workers in counts]
    columns = ("test_accuracy", "test_loss", "train_loss")
    many, more = ([[row[c] for c in columns] for row in rows] for rows in runs[1:])
    assert many == more
    for a, b in zip(runs[0], runs[1], strict=True):
        assert float(a["test_loss"]) == pytest.approx(float(b["test_loss"]), rel=1e-5)


def test_auto_workers_fall_back_to_one_for_a_model_with_dropout(caplog):
    with_dropout = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5), torch.nn.Linear(4, 2))
    assert random_layers(with_dropout) == ["Dropout"] and random_layers(torch.nn.Linear(4, 2)) == []
    with caplog.at_level("WARNING"):
        assert resolve_workers("auto", "cpu", lambda: with_dropout) == 1
    assert "Dropout" in caplog.text and "engine.workers" in caplog.text
    assert resolve_workers(2, "cpu", lambda: with_dropout) == 2  # asked for explicitly
    assert resolve_workers("auto", "cpu", lambda: torch.nn.Linear(4, 2)) == usable_cores()
