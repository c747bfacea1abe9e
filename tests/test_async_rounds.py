"""The virtual clock in synchronous rounds and fedsim's asynchronous loop: simulated time against hand-computed
durations, deadlines and availability, replies applied in the clock's order whatever the threads, and a stopped
asynchronous run resumed to the same result."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedsim.async_rounds import AsyncLoop
from fedsim.checkpoint import load_checkpoint
from fedsim.clock import VirtualClock, message_bytes
from fedsim.config import compose_experiment
from fedsim.devices import DeviceModel, DeviceProfile, device_model
from fedsim.protocol.keys import ARRAYS_RECORD, METRICS_RECORD, NUM_EXAMPLES, ROUND_KEY
from fedsim.run import run_experiment
from fedsim.testing.crash import untimed_metrics

from .conftest import stop_after_checkpoint

SMALL = ["num_clients=6", "progress=false", "client.local_epochs=1", "fraction_evaluate=0.0"]


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as stream:
        return list(csv.DictReader(stream))


def _run(tmp_path: Path, name: str, *overrides: str) -> tuple[dict[str, Any], list[dict[str, str]]]:
    experiment = compose_experiment([*SMALL, *overrides])
    summary = run_experiment(experiment, tmp_path / name, show_progress=False)
    return summary, _rows(tmp_path / name)


# --- synchronous rounds on the clock ---------------------------------------------------------------------------------
def test_a_synchronous_round_lasts_as_long_as_its_slowest_client(tmp_path):
    """Identical devices: a round's simulated seconds are max_k (n_k·E/speed) + model bytes both ways over the
    bandwidth + two latencies, computed here from the clients' sizes and the model."""
    speed, bandwidth, latency = 500.0, 2.0e5, 0.1
    _, rows = _run(tmp_path, "sync", "num_rounds=2", f"devices.speed={speed}", f"devices.bandwidth={bandwidth}",
                   f"devices.latency={latency}", "client.local_epochs=2")
    from fedsim.data.federation import federation_for

    experiment = compose_experiment([*SMALL, "client.local_epochs=2"])
    federation = federation_for(experiment)
    largest = max(len(federation.client_rows(pid)[0]) for pid in range(6))
    from fedsim.build import build_model

    # what crosses the wire: each array's buffer in Flower's serialisation (numpy's .npy, header included)
    state = build_model(experiment, federation.data).state_dict()
    model_bytes = sum(len(array.data) for array in ArrayRecord({k: t.detach() for k, t in state.items()}).values())
    expected = largest * 2 / speed + 2 * model_bytes / bandwidth + 2 * latency
    assert float(rows[0]["sim_time"]) == 0.0
    assert float(rows[1]["sim_time"]) == pytest.approx(expected, rel=1e-9)
    assert float(rows[2]["sim_time"]) == pytest.approx(2 * expected, rel=1e-9)


def test_the_clock_changes_nothing_but_sim_time_without_a_device_model(tmp_path):
    """The default (identical devices, always online, no deadline) and a lognormal model give the same metrics:
    the clock only times the rounds."""
    _, plain = _run(tmp_path, "plain", "num_rounds=2")
    _, timed = _run(tmp_path, "timed", "num_rounds=2", "devices.model=lognormal")
    untimed = [{k: v for k, v in row.items() if k not in ("sim_time", "round_seconds", "wall_seconds")}
               for row in plain]
    assert untimed == [{k: v for k, v in row.items() if k not in ("sim_time", "round_seconds", "wall_seconds")}
                       for row in timed]
    assert float(timed[-1]["sim_time"]) != float(plain[-1]["sim_time"]) > 0


def test_the_deadline_drops_the_slow_group_and_caps_the_round(tmp_path):
    """Slow clients 100x slower than a deadline the fast ones meet: they never count, and every round lasts
    exactly the deadline."""
    _, rows = _run(tmp_path, "deadline", "num_rounds=2", "devices.model=groups", "devices.slow_clients=[0,1]",
                   "devices.slow_factor=100", "server.deadline=2.0")
    for row in rows[1:]:
        assert row["sampled"].split() == ["2", "3", "4", "5"]
        assert int(row["failures"]) == 2
    assert [float(row["sim_time"]) for row in rows] == [0.0, 2.0, 4.0]


def test_offline_clients_are_not_called_and_the_draw_is_seeded(tmp_path):
    _, first = _run(tmp_path, "a", "num_rounds=3", "devices.availability=0.5")
    _, again = _run(tmp_path, "b", "num_rounds=3", "devices.availability=0.5")
    sampled = [row["sampled"] for row in first[1:]]
    assert sampled == [row["sampled"] for row in again[1:]]
    counts = [len(s.split()) for s in sampled]
    assert all(0 < c < 6 for c in counts) and [int(r["failures"]) for r in first[1:]] == [6 - c for c in counts]


def test_a_bad_device_setting_is_one_line_before_any_work():
    from fedsim.config import validate
    from fedsim.errors import ConfigError

    with pytest.raises(ConfigError, match="server.deadline"):
        validate(compose_experiment(["server.deadline=-1"]))
    with pytest.raises(ConfigError, match="server.deadline"):
        validate(compose_experiment(["strategy=fedasync", "server.deadline=5"]))
    with pytest.raises(ConfigError, match="strategy.concurrency"):
        validate(compose_experiment(["strategy=fedasync", "strategy.concurrency=11"]))
    with pytest.raises(ConfigError, match="devices.model"):
        validate(compose_experiment(["devices.model=quantum"]))


def test_a_slow_class_beyond_the_data_is_refused_before_the_run_folder_opens(tmp_path):
    from fedsim.errors import ConfigError

    with pytest.raises(ConfigError, match=r"devices.slow_class=12 is not allowed: a class in 0..9"):
        run_experiment(compose_experiment([*SMALL, "devices.model=groups", "devices.slow_class=12"]), tmp_path / "run",
                       show_progress=False)
    assert not (tmp_path / "run" / "config.yaml").exists()


# --- the asynchronous loop ---------------------------------------------------------------------------------------
class _Grid:
    """Nodes 0..n-1 holding partitions 0..n-1 that answer at once with `num-examples` and their partition id."""

    def __init__(self, num_nodes: int) -> None:
        self.num_nodes = num_nodes
        self.recent_norms: list[float] = []
        self.pending: dict[str, Message] = {}
        self.sent: list[tuple[int, int]] = []  # (partition, round) of each push

    def partition_of(self, node: int) -> int:
        return node

    def get_node_ids(self) -> list[int]:
        return list(range(self.num_nodes))

    def push_messages(self, messages):
        ids = []
        for message in messages:
            mid = f"m{len(self.sent)}"
            message.metadata.__dict__["_message_id"] = mid
            self.pending[mid] = message
            self.sent.append((message.metadata.dst_node_id, int(message.content["config"][ROUND_KEY])))
            ids.append(mid)
        return ids

    def receive(self, replies):
        return list(replies)

    def collect(self, ids):
        replies = []
        for mid in list(ids)[::-1]:  # arrival order unlike push order: the loop must not care
            message = self.pending.pop(mid)
            node = message.metadata.dst_node_id
            content = RecordDict({ARRAYS_RECORD: ArrayRecord({"w": Array(np.full(2, float(node), np.float32))}),
                                  METRICS_RECORD: MetricRecord({NUM_EXAMPLES: 10})})
            replies.append(Message(content, reply_to=message))
        return replies


class _Recording:
    """An asynchronous strategy that records (partition, staleness) of each update and bumps the version."""

    concurrency = 3

    def __init__(self) -> None:
        self.applied: list[tuple[int, int]] = []

    def configure_update(self, version: int, arrays: ArrayRecord, config: ConfigRecord) -> ConfigRecord:
        return config

    def apply_update(self, current, start, reply, staleness):
        self.applied.append((int(reply.content[ARRAYS_RECORD]["w"].numpy()[0]), staleness))
        return ArrayRecord({"w": Array(np.full(2, float(len(self.applied)), np.float32))})


def _loop(speeds: list[float], strategy: _Recording, availability: float = 1.0) -> tuple[AsyncLoop, _Grid]:
    profiles = tuple(DeviceProfile(speed, 1e12, 1e12, 0.0, availability) for speed in speeds)
    devices = DeviceModel(profiles, (), False, 0)
    grid = _Grid(len(speeds))
    loop = AsyncLoop(strategy, grid, VirtualClock(devices, local_epochs=1), train_config=ConfigRecord({}),
                     train_rows=dict.fromkeys(range(len(speeds)), 10), seed=0, timeout=60.0)
    return loop, grid


task_identity = pytest.fixture(autouse=True)(lambda task_identity: None)


def test_fast_clients_come_back_more_often_than_slow_ones():
    """Three slots over four clients of 10, 5, 1 and 100 rows/s (10 rows each: 1, 2, 10 and 0.1 s): in six updates
    the slowest client returns at most once, the fastest at least twice, and the first update is fresh."""
    strategy = _Recording()
    loop, grid = _loop([10.0, 5.0, 1.0, 100.0], strategy)
    loop.run(ArrayRecord({"w": Array(np.zeros(2, np.float32))}), first_row=1, num_rows=2,
             after_update_row=lambda row, arrays: None)
    done = [partition for partition, _ in strategy.applied]
    assert len(done) == loop.updates == 6
    assert done.count(2) <= 1 and done.count(3) >= 2
    assert strategy.applied[0][1] == 0
    assert loop.dispatched == len(grid.sent) == 6 + len(loop.flights)


def test_the_clock_order_holds_against_a_replay():
    """An independent replay of the event order from the loop's own dispatch record gives the same update order
    and staleness."""
    strategy = _Recording()
    loop, grid = _loop([4.0, 2.0, 1.0, 8.0, 3.0], strategy)
    loop.run(ArrayRecord({"w": Array(np.zeros(2, np.float32))}), first_row=1, num_rows=4,
             after_update_row=lambda row, arrays: None)
    speeds = [4.0, 2.0, 1.0, 8.0, 3.0]
    # replay: dispatches happen in grid.sent order; each dispatch starts when its slot frees (at the previous
    # update's time) and carries the version current then
    events: list[tuple[float, int, int, int]] = []  # (finish, seq, partition, version)
    now, version, applied, sent = 0.0, 0, [], list(grid.sent)
    in_flight = 0
    while len(applied) < len(strategy.applied):
        while in_flight < 3 and sent:
            partition, seq = sent.pop(0)
            events.append((now + 10 / speeds[partition], seq, partition, version))
            in_flight += 1
        events.sort()
        finish, _, partition, started = events.pop(0)
        now, in_flight = finish, in_flight - 1
        applied.append((partition, version - started))
        version += 1
    assert applied == strategy.applied
    assert loop.clock.now == pytest.approx(now)


def test_an_asynchronous_run_is_the_same_with_one_worker_or_two(tmp_path):
    common = ["strategy=fedasync", "num_rounds=2", "strategy.concurrency=3", "devices.model=lognormal"]
    one, rows_one = _run(tmp_path, "one", *common, "engine.workers=1")
    two, rows_two = _run(tmp_path, "two", *common, "engine.workers=2")
    # PyTorch's intra-op threads per worker differ (2 vs 1): the training loss, and so the model and its test loss,
    # may differ in their last bits (on some CPUs they do); every count and the accuracy are the same
    for row_one, row_two in zip(untimed_metrics(tmp_path / "one"), untimed_metrics(tmp_path / "two"), strict=True):
        for column in ("train_loss", "test_loss"):
            loss_one, loss_two = row_one.pop(column), row_two.pop(column)
            assert (loss_one == loss_two == "") or float(loss_one) == pytest.approx(float(loss_two), rel=1e-6)
        assert row_one == row_two
    assert one["final_accuracy"] == two["final_accuracy"]
    assert [float(r["staleness_max"]) for r in rows_one[1:]] == [float(r["staleness_max"]) for r in rows_two[1:]]
    assert float(rows_one[-1]["model_version"]) == 6.0  # FedAsync: one version per update, 3 per row


def test_fedbuff_learns_on_the_asynchronous_loop(tmp_path):
    summary, rows = _run(tmp_path, "fedbuff", "strategy=fedbuff", "num_rounds=6", "strategy.concurrency=3",
                         "strategy.buffer_size=3", "devices.model=lognormal", "client.local_epochs=2")
    assert float(rows[-1]["model_version"]) == 6.0  # K = 3 updates per version, 3 updates per row
    assert summary["final_accuracy"] > 0.5
    times = [float(r["sim_time"]) for r in rows]
    assert times == sorted(times) and times[-1] > 0


def test_a_stopped_asynchronous_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    """Stopped right after row 2's checkpoint with two clients in flight, resumed: the same rows as the run left
    alone (the in-flight clients are sent again with the models they had started from)."""
    overrides = [*SMALL, "strategy=fedbuff", "num_rounds=4", "strategy.concurrency=3", "strategy.buffer_size=2",
                 "devices.model=lognormal"]
    run_experiment(compose_experiment(overrides), tmp_path / "reference", show_progress=False)
    stop_after_checkpoint(monkeypatch, overrides, tmp_path / "stopped", 2)
    checkpoint = load_checkpoint(tmp_path / "stopped")
    # the slot of the row's last update is filled after the checkpoint
    assert checkpoint.loop is not None and len(checkpoint.loop["flights"]) == 2
    run_experiment(compose_experiment(overrides), tmp_path / "stopped", show_progress=False, resume=True)
    assert untimed_metrics(tmp_path / "stopped") == untimed_metrics(tmp_path / "reference")


def test_a_scaled_update_is_rejected_against_the_recent_updates(tmp_path):
    """An attacker sending 1000x its update: each reply is checked alone, against the norms of the last C accepted
    updates, so the attacker's replies are rejected once honest ones are on record (here none came first)."""
    summary, rows = _run(tmp_path, "attacked", "strategy=fedasync", "num_rounds=4", "strategy.concurrency=3",
                         "attack.kind=scale", "attack.clients=[0]")
    with open(tmp_path / "attacked" / "rejections.csv", newline="") as stream:
        rejected = list(csv.DictReader(stream))
    assert rejected and {row["partition"] for row in rejected} == {"0"}
    assert all("update norm" in row["reason"] for row in rejected)
    assert sum(int(row["rejected"]) for row in rows) == len(rejected)
    assert all("0" not in row["sampled"].split() for row in rows)  # no update of the attacker was applied
    assert all(math.isfinite(float(row["test_loss"])) for row in rows) and summary["final_accuracy"] > 0


def test_message_bytes_counts_the_arrays():
    record = ArrayRecord({"a": Array(np.zeros((3, 4), np.float32)), "b": Array(np.zeros(5, np.int64))})
    message = Message(RecordDict({ARRAYS_RECORD: record}), dst_node_id=1, message_type="train")
    # each array's buffer as Flower serialises it: the raw bytes plus numpy's .npy header (128 bytes here)
    assert message_bytes(message) == (3 * 4 * 4 + 128) + (5 * 8 + 128)


def test_device_model_defaults_make_every_client_alike():
    devices = device_model({}, 4, 0)
    assert len({devices.profile(p) for p in range(4)}) == 1
    assert math.isfinite(devices.profile(0).duration(100, 10, 10))


@pytest.mark.parametrize("values", [np.arange(6, dtype=np.float32).reshape(2, 3), np.zeros(5, np.int64),
                                    np.ones((), np.float64), np.zeros((0, 3), np.float16),
                                    np.asfortranarray(np.ones((3, 4))), np.array([True, False])])
def test_the_quick_array_reader_gives_what_flower_gives(values):
    from fedsim.protocol.arrays import as_numpy

    array = Array(values)
    quick, flower = as_numpy(array), array.numpy()
    assert quick.dtype == flower.dtype and quick.shape == flower.shape and np.array_equal(quick, flower)
    assert quick.flags.writeable


def test_the_quick_array_reader_refuses_a_short_buffer_as_flower_does():
    """A client's array whose buffer is shorter than its header says: numpy's own error, not a wrong array."""
    from fedsim.protocol.arrays import as_numpy

    good = Array(np.zeros(8, np.float32))
    short = Array(dtype=good.dtype, shape=good.shape, stype=good.stype, data=good.data[:-4])
    with pytest.raises(ValueError):
        short.numpy()
    with pytest.raises(ValueError):
        as_numpy(short)
