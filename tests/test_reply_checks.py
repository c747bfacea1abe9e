"""Bad client replies are rejected before any strategy sees them, logged and counted; the round goes on.

Unit checks of each kind of malformed reply, a hypothesis fuzz of every strategy's aggregation behind the checks,
and end-to-end runs with injected faults (crashes, NaN weights, slow clients) on the in-process engine.
"""

from __future__ import annotations

import copy
import csv
import time

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsim.client import app as client_app
from fedsim.config import compose_experiment, group_options, validate
from fedsim.engines.inprocess import InProcessGrid
from fedsim.errors import ConfigError
from fedsim.grid.fedsim_grid import FedsimGrid
from fedsim.grid.filtering import REJECTED_PREFIX
from fedsim.reply_checks import ReplyLimits, outsized_updates, reply_problem
from fedsim.testing.malformed import MALFORMATIONS, first_round, malformed

from .conftest import data_for, give_nodes_config, set_task_identity

set_task_identity()  # messages built here need a sender

STRATEGIES = group_options("strategy")


def _model_arrays() -> ArrayRecord:
    torch.manual_seed(0)
    return ArrayRecord({"w": torch.randn(3, 2), "b": torch.zeros(3), "steps": torch.tensor([4])})


def _train_pair(arrays: ArrayRecord | None = None, metrics: dict | None = None):
    """A sent train message and a well-formed reply to it (same arrays plus a small step)."""
    sent_arrays = _model_arrays()
    sent = Message(RecordDict({"arrays": sent_arrays}), dst_node_id=7, message_type="train")
    if arrays is None:
        arrays = ArrayRecord({k: Array(v.numpy() + (0.1 if v.numpy().dtype.kind == "f" else 0))
                              for k, v in sent_arrays.items()})
    metrics = metrics or {"num-examples": 50, "train_loss": 0.5}
    content = RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)})
    return sent, Message(content, dst_node_id=0, message_type="train")


def _with(key: str, values: np.ndarray) -> ArrayRecord:
    arrays = {k: Array(v.numpy()) for k, v in _model_arrays().items()}
    arrays[key] = Array(values)
    return ArrayRecord(arrays)


LIMITS = ReplyLimits(max_update_norm=10.0, client_sizes={0: 100})


def test_a_well_formed_reply_passes():
    sent, reply = _train_pair()
    assert reply_problem(reply, sent, LIMITS, 0) is None


@pytest.mark.parametrize("arrays, metrics, expected", [
    (_with("w", np.full((3, 2), np.nan, dtype=np.float32)), None, "'w' has NaN or Inf values"),
    (_with("b", np.array([0, np.inf, 0], dtype=np.float32)), None, "'b' has NaN or Inf values"),
    (_with("w", np.zeros((2, 3), dtype=np.float32)), None, "'w' is float32[2, 3], the model's is float32[3, 2]"),
    (_with("w", np.zeros((3, 2), dtype=np.float64)), None, "'w' is float64[3, 2], the model's is float32[3, 2]"),
    (ArrayRecord({"w": Array(np.zeros((3, 2), dtype=np.float32))}), None,
     "array keys differ from the model's (missing ['b', 'steps']"),
    (_with("extra", np.zeros(1, dtype=np.float32)), None, "extra ['extra']"),
    (_with("w", np.full((3, 2), 50.0, dtype=np.float32)), None, "update norm"),
    (None, {"train_loss": 0.5}, "no 'num-examples' in its metrics"),
    (None, {"num-examples": -3}, "'num-examples' = -3: outside 1..100"),
    (None, {"num-examples": 0}, "outside 1..100"),
    (None, {"num-examples": 101}, "outside 1..100"),
    (None, {"num-examples": 2.5}, "outside 1..100"),
    (None, {"num-examples": float("nan")}, "not a number"),
    (None, {"num-examples": 10, "train_loss": float("inf")}, "metric 'train_loss' is not finite"),
])
def test_each_kind_of_malformed_train_reply_is_named(arrays, metrics, expected):
    sent, reply = _train_pair(arrays, metrics)
    problem = reply_problem(reply, sent, LIMITS, 0)
    assert problem is not None and expected in problem


def test_replies_without_records_or_with_unreadable_arrays_are_rejected():
    sent, _ = _train_pair()
    no_arrays = Message(RecordDict({"metrics": MetricRecord({"num-examples": 5})}), dst_node_id=0, message_type="train")
    assert "ArrayRecords [], expected ['arrays']" in reply_problem(no_arrays, sent, LIMITS, 0)
    no_metrics = Message(RecordDict({"arrays": _model_arrays()}), dst_node_id=0, message_type="train")
    assert reply_problem(no_metrics, sent, LIMITS, 0) == "no MetricRecord"
    torn = _model_arrays()
    torn["w"].data = torn["w"].data[:5]  # bytes cut short in transit
    _, reply = _train_pair(torn)
    assert reply_problem(reply, sent, LIMITS, 0) is not None
    failed = Message(error=Error(code=2, reason="boom"), metadata=copy.deepcopy(reply.metadata))
    assert reply_problem(failed, sent, LIMITS, 0) is None  # a client's own error passes through as it is


def test_unknown_client_sizes_use_a_generous_cap():
    sent, reply = _train_pair(metrics={"num-examples": 10**6})
    assert reply_problem(reply, sent, ReplyLimits(), 3) is None


@pytest.mark.parametrize("override, key", [("server.max_update_norm=0", "server.max_update_norm"),
                                           ("server.max_update_norm=fast", "server.max_update_norm"),
                                           ("server.update_norm_factor=1", "server.update_norm_factor"),
                                           ("server.min_valid_replies=0", "server.min_valid_replies"),
                                           ("server.min_valid_replies=11", "server.min_valid_replies"),
                                           ("faults.crash_rate=1.5", "faults.crash_rate"),
                                           ("faults.slow_seconds=-1", "faults.slow_seconds")])
def test_reliability_keys_are_validated(override, key):
    with pytest.raises(ConfigError, match=key):
        validate(compose_experiment([override]))


# --- the relative update-norm bound (server.max_update_norm=auto) ------------------------------------------------

def test_the_default_bound_is_relative_and_a_number_or_null_replace_it():
    assert ReplyLimits.from_experiment(compose_experiment()) == ReplyLimits(None, 1, {}, 100.0)
    assert ReplyLimits.from_experiment(compose_experiment(["server.update_norm_factor=20"])).update_norm_factor == 20.0
    limits = ReplyLimits.from_experiment(compose_experiment(["server.max_update_norm=5"]))
    assert limits == ReplyLimits(5.0, 1, {}, None)
    limits = ReplyLimits.from_experiment(compose_experiment(["server.max_update_norm=null"]))
    assert limits == ReplyLimits(None, 1, {}, None)
    validate(compose_experiment(["server.max_update_norm=auto", "server.update_norm_factor=1.5"]))


@pytest.mark.parametrize("norms, expected", [
    ([1.0, 2.0, 3.0, 400.0], [None, None, None, "update norm 400 > 100 × the round's median (2)"]),
    ([1.0, 2.0, 3.0, 4.0, 1000.0], [None, None, None, None, "update norm 1e+03 > 100 × the round's median (2.5)"]),
    # the attacker is not its own reference
    ([1000.0, 1.0], ["update norm 1e+03 > 100 × the round's median (1)", None]),
    ([5.0, 400.0, 450.0], [None, None, None]),  # two large of three: the median of the others is large too
    ([3.0, 300.0], [None, None]),  # exactly 100 times: not above
    ([1e9], [None]),  # alone: nothing to compare with
    ([0.0, 0.0, 5.0], [None, None, None]),  # a median of 0: nothing to compare with
    ([], []),
])
def test_outsized_updates_compare_each_norm_with_the_median_of_the_others(norms, expected):
    assert outsized_updates(norms, 100.0) == expected


def _batch(steps: list[float]) -> tuple[list[Message], dict]:
    """Training replies moving every float of the model by `step` (update norm step * sqrt(6 + 3)), one per node."""
    sent_arrays = _model_arrays()
    sent, replies = {}, []
    for node, step in enumerate(steps):
        message = Message(RecordDict({"arrays": sent_arrays}), dst_node_id=node + 1, message_type="train")
        message.metadata.__dict__["_message_id"] = f"m{node}"
        sent[message.metadata.message_id] = message
        arrays = ArrayRecord({k: Array(v.numpy() + (step if v.numpy().dtype.kind == "f" else 0))
                              for k, v in sent_arrays.items()})
        content = RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 50})})
        reply = Message(content, dst_node_id=0, message_type="train")
        reply.metadata.__dict__["_reply_to_message_id"] = f"m{node}"
        reply.metadata.__dict__["_src_node_id"] = node + 1
        replies.append(reply)
    return replies, sent


def test_the_grid_rejects_a_scaled_update_by_the_rounds_median(caplog):
    grid = FedsimGrid(InProcessGrid(client_app, 1), limits=ReplyLimits(update_norm_factor=100.0))
    replies, sent = _batch([0.1, 0.2, 0.15, 0.2 * 1000, 0.12])
    with caplog.at_level("WARNING", logger="fedsim"):
        checked = grid.check_replies(replies, sent)
    assert [reply.has_error() for reply in checked] == [False, False, False, True, False]
    # norms are 3 * step (9 floats moved by step); the median of the other four is 3 * (0.12 + 0.15) / 2 = 0.405
    reason = "update norm 600 > 100 × the round's median (0.405)"
    assert checked[3].error.reason == REJECTED_PREFIX + reason
    assert [(r.node_id, r.kind, r.reason) for r in grid.take_round_log().rejections] == [(4, "train", reason)]
    assert f"(node 4): {reason}" in caplog.text
    nan_reply = malformed(replies[0], "nan")  # a malformed reply is neither measured nor a reference
    assert [r.has_error() for r in grid.check_replies([nan_reply, replies[3]], sent)] == [True, False]


def test_with_an_absolute_bound_or_none_the_relative_one_is_off():
    replies, sent = _batch([0.1, 0.2, 200.0])
    absolute = FedsimGrid(InProcessGrid(client_app, 1), limits=ReplyLimits(max_update_norm=1000.0))
    assert [r.has_error() for r in absolute.check_replies(replies, sent)] == [False, False, False]
    assert [r.has_error() for r in FedsimGrid(InProcessGrid(client_app, 1)).check_replies(replies, sent)] == [False] * 3


# --- a node told to misbehave (node config `misbehave`) ---------------------------------------------------------

# What each attack sends, and how a node's `misbehave` is read: tests/test_attacks.py.


@pytest.fixture
def one_node_misbehaves(monkeypatch):
    """In-process runs in which partition 3's node has `misbehave="scale"` in its node config."""
    give_nodes_config(monkeypatch, {3: {"misbehave": "scale"}})


def test_a_node_told_to_scale_its_update_is_rejected_every_round_by_the_default_bound(run_quietly, one_node_misbehaves):
    summary, run_dir = run_quietly("num_rounds=10")
    rows = _rows(run_dir)[1:]
    assert [row["rejected"] for row in rows] == ["1"] * 10
    assert all("3" not in row["sampled"].split() for row in rows)
    with open(run_dir / "rejections.csv", newline="") as stream:
        logged = list(csv.DictReader(stream))
    assert [(line["round"], line["partition"], line["kind"]) for line in logged] == [(str(r), "3", "train")
                                                                                     for r in range(1, 11)]
    assert all("× the round's median" in line["reason"] for line in logged)
    assert summary["final_accuracy"] > 0.8  # the nine honest clients still learn
    with open(run_dir / "nodes.csv", newline="") as stream:  # its node was accepted: it is a known partition
        assert [(row["partition"], row["status"]) for row in csv.DictReader(stream)] == [(str(p), "accepted")
                                                                                         for p in range(10)]

    collapsed, run_dir = run_quietly("num_rounds=10", "server.max_update_norm=null", name="unbounded")
    assert collapsed["final_accuracy"] < 0.3 and sum(int(row["rejected"]) for row in _rows(run_dir)) == 0

@pytest.fixture(scope="module", params=STRATEGIES)
def round_setup(request):
    return first_round(request.param, *data_for(request.param))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=st.lists(st.sampled_from(MALFORMATIONS), min_size=4, max_size=4))
def test_no_malformed_reply_reaches_any_strategys_global_model(round_setup, plan):
    strategy, grid, arrays, replies, sent = round_setup
    mutated = [malformed(reply, how) for reply, how in zip(replies, plan, strict=True)]
    grid.take_round_log()
    checked = grid.check_replies(mutated, sent)
    log = grid.take_round_log()
    bad = sum(how != "none" for how in plan)
    assert len(log.rejections) == bad
    assert all(r.has_error() and REJECTED_PREFIX in r.error.reason
               for r, how in zip(checked, plan, strict=True) if how != "none")
    new_arrays, _ = strategy.aggregate_train(1, checked)  # must not raise
    if new_arrays is None:  # too few valid: nothing aggregated, the caller keeps the global model
        needed = strategy.min_replies() if hasattr(strategy, "min_replies") else 1  # Bulyan: 4f + 3
        assert len(plan) - bad < needed
        return
    assert list(new_arrays.keys()) == list(arrays.keys())
    for key, array in new_arrays.items():
        values = array.numpy()
        assert values.shape == tuple(arrays[key].shape) and array.dtype == arrays[key].dtype
        assert np.isfinite(values).all()


# --- end to end: faults injected, the run finishes ---------------------------------------------------------------

def _rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as stream:
        return list(csv.DictReader(stream))


def test_crashing_and_nan_clients_are_reported_and_the_run_finishes(run_quietly):
    summary, run_dir = run_quietly("num_rounds=4", "faults.crash_rate=0.2", "faults.nan_rate=0.2")
    rows = _rows(run_dir)[1:]
    assert sum(int(r["failures"]) for r in rows) > 0 and sum(int(r["rejected"]) for r in rows) > 0
    for row in rows:  # the clients that trained fine are exactly the ones aggregated and logged
        assert int(row["train_clients"]) + int(row["failures"]) + int(row["rejected"]) == 10
    with open(run_dir / "rejections.csv", newline="") as stream:
        logged = list(csv.DictReader(stream))
    assert len(logged) == sum(int(r["rejected"]) for r in rows)
    assert all("NaN" in line["reason"] and line["kind"] == "train" for line in logged)
    assert summary["final_accuracy"] > 0.5  # the healthy majority still learns


def test_faults_are_seeded_per_round_and_client(run_quietly):
    first = _rows(run_quietly("num_rounds=2", "faults.crash_rate=0.3", name="a")[1])
    second = _rows(run_quietly("num_rounds=2", "faults.crash_rate=0.3", name="b")[1])
    assert [r["sampled"] for r in first] == [r["sampled"] for r in second]
    assert [r["test_accuracy"] for r in first] == [r["test_accuracy"] for r in second]


def test_too_few_valid_replies_skip_the_round_and_keep_the_model(run_quietly):
    summary, run_dir = run_quietly("num_rounds=3", "faults.nan_rate=1.0")
    rows = _rows(run_dir)
    assert [r["skipped"] for r in rows[1:]] == ["1", "1", "1"]
    assert len({r["test_accuracy"] for r in rows}) == 1  # never moved from the initial model
    _, run_dir = run_quietly("num_rounds=2", "faults.nan_rate=0.5", "server.min_valid_replies=10", name="strict")
    assert [r["skipped"] for r in _rows(run_dir)[1:]] == ["1", "1"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_survives_nan_clients(run_quietly, strategy):
    summary, run_dir = run_quietly("num_clients=5", "num_rounds=3", f"strategy={strategy}", "faults.nan_rate=0.4",
                                   *data_for(strategy), name=strategy)
    rows = _rows(run_dir)
    assert summary["rounds_completed"] == 3 and sum(int(r["rejected"]) for r in rows) > 0
    assert all(np.isfinite(float(r["test_loss"])) for r in rows)


def test_a_client_slower_than_the_round_timeout_is_left_out(run_quietly):
    started = time.perf_counter()
    summary, run_dir = run_quietly("num_clients=3", "num_rounds=1", "faults.slow_rate=1.0", "faults.slow_seconds=30",
                                   "server.round_timeout=3")
    rows = _rows(run_dir)
    # client 0 hangs past the timeout; clients 1 and 2 never get their turn; all three are reported
    assert int(rows[1]["failures"]) == 3 and rows[1]["skipped"] == "1" and summary["rounds_completed"] == 1
    assert time.perf_counter() - started < 25


def test_a_client_that_runs_out_of_memory_is_reported_and_left_out(run_quietly, monkeypatch):
    import fedsim.client as client_module

    real_train = client_module.train_local
    calls = {"n": 0}

    def out_of_memory_on_second_call(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(client_module, "train_local", out_of_memory_on_second_call)
    summary, run_dir = run_quietly("num_clients=3", "num_rounds=2")
    rows = _rows(run_dir)
    assert [r["failures"] for r in rows[1:]] == ["1", "0"] and summary["rounds_completed"] == 2
    # one client ran out of memory in round 1; the other two were aggregated
    assert len(rows[1]["sampled"].split()) == 2
