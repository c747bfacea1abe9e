"""Checkpoint and resume: a run killed with SIGKILL at a random round and resumed with `fedsim resume` ends with the
same metrics, round by round, as the same run left alone, for every strategy; loading a checkpoint never runs code
from it, and a checkpoint that cannot be used is one line saying how to start over."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys

import pytest

from fedsim.config import compose_experiment, group_options
from fedsim.run import run_experiment
from fedsim.testing.crash import SLOW_CLIENTS, kill_during, untimed_metrics

from .conftest import data_for, stop_after_checkpoint

BASE = ["num_clients=4", "num_rounds=6", "fraction_train=0.5", *SLOW_CLIENTS, "progress=false"]


# A real SIGKILL and `fedsim resume` in a fresh process; FedCE (node states, running means) runs by default, the
# others are slow (20 s each on 2 idle cores): every strategy's checkpoint is checked in one process below.
@pytest.mark.parametrize("strategy", [pytest.param("fedavg", marks=pytest.mark.slow), "fedce",
                                      pytest.param("feddisco", marks=pytest.mark.slow)])
def test_a_run_killed_at_a_random_round_resumes_to_the_same_result(tmp_path, strategy):
    overrides = [*BASE, f"strategy={strategy}"]
    reference_dir = tmp_path / "reference"
    reference = run_experiment(compose_experiment(overrides), reference_dir, show_progress=False)

    at_round = random.Random(strategy).randint(1, 4)
    killed = tmp_path / "killed"
    kill_during(killed, overrides, at_round)
    assert (killed / "checkpoint.pt").exists()

    completed = subprocess.run([sys.executable, "-m", "fedsim.cli", "resume", str(killed)], capture_output=True,
                               text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    resumed = json.loads((killed / "summary.json").read_text())
    assert untimed_metrics(killed) == untimed_metrics(reference_dir)  # every round, every client, every weight
    assert resumed["final_accuracy"] == reference["final_accuracy"]
    assert resumed["client_accuracy"] == reference["client_accuracy"]


def test_resume_says_what_it_does_with_finished_and_foreign_folders(tmp_path, run_quietly):
    from fedsim.cli import main

    _, folder = run_quietly("num_clients=3", "num_rounds=1")
    main(["resume", str(folder)])  # already complete: nothing to do
    with pytest.raises(SystemExit) as exit_info:
        main(["resume", str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2


def test_checkpoints_can_be_turned_off(run_quietly):
    _, folder = run_quietly("num_clients=3", "num_rounds=2", "server.checkpoint_every=0")
    assert not (folder / "checkpoint.pt").exists()


def test_a_strategy_with_state_that_is_not_plain_data_turns_checkpoints_off_not_the_run(run_quietly, monkeypatch,
                                                                                        caplog):
    import threading

    import fedsim.server as server_module

    build = server_module.build_strategy

    def with_a_lock(*args, **kwargs):
        strategy = build(*args, **kwargs)
        strategy.lock = threading.Lock()  # neither data nor code: refused at save time, by name
        return strategy

    monkeypatch.setattr(server_module, "build_strategy", with_a_lock)
    summary, folder = run_quietly("num_clients=3", "num_rounds=2")
    assert summary["rounds_completed"] == 2 and not (folder / "checkpoint.pt").exists()
    warnings = [r.getMessage() for r in caplog.records if "checkpoints turned off" in r.getMessage()]
    assert len(warnings) == 1 and "strategy['lock']" in warnings[0]


# --- every strategy, in one process: the checkpoint file carries everything a resumed run needs ---------------------

# What a strategy's run sets beyond its data (`data_for`): FedProx with stragglers it keeps, FedLAW fewer server epochs.
STRATEGY_EXTRAS = {"fedprox": ["strategy.proximal_mu=0.1", "stragglers.fraction=0.5"],
                   "fedlaw": ["strategy.server_epochs=2"]}


@pytest.mark.parametrize("strategy", group_options("strategy"))
def test_every_strategy_resumes_from_its_checkpoint_file_bit_for_bit(tmp_path, monkeypatch, strategy):
    """Stopped after round 2 of 3, resumed from the file alone (a fresh strategy, engine and node states), every
    metrics row, client weight and the final model equal those of the run left alone."""
    import torch

    import fedsim.server as server_module
    from fedsim.checkpoint import load_checkpoint

    overrides = ["num_clients=3", "num_rounds=3", "fraction_train=0.67", "client.local_epochs=1", "progress=false",
                 f"strategy={strategy}", *data_for(strategy), *STRATEGY_EXTRAS.get(strategy, [])]
    reference = run_experiment(compose_experiment(overrides), tmp_path / "reference", show_progress=False)

    rounds, first_rounds = server_module.ServerRun.rounds, []

    def recording_first_round(run, arrays, first_round, progress):  # synchronous and asynchronous runs alike
        first_rounds.append(first_round)
        return rounds(run, arrays, first_round, progress)

    monkeypatch.setattr(server_module.ServerRun, "rounds", recording_first_round)
    stopped = tmp_path / "stopped"
    stop_after_checkpoint(monkeypatch, overrides, stopped, 2)
    assert load_checkpoint(stopped).server_round == 2
    resumed = run_experiment(compose_experiment(overrides), stopped, show_progress=False, resume=True)

    assert first_rounds == [1, 3]  # it went on from the checkpoint, rather than starting over
    assert untimed_metrics(stopped) == untimed_metrics(tmp_path / "reference")
    assert resumed["client_accuracy"] == reference["client_accuracy"]
    final, expected = torch.load(stopped / "model.pt"), torch.load(tmp_path / "reference" / "model.pt")
    assert final.pop("__fedsim__") == expected.pop("__fedsim__") and final.keys() == expected.keys()
    assert all(torch.equal(final[name], expected[name]) for name in expected)


# --- safe loading, and one line for a checkpoint that cannot be used --------------------------------------------------

class _Payload:
    """A pickle that, when loaded, creates a marker directory: what a hostile checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_malicious_checkpoint_runs_nothing_and_is_refused(tmp_path):
    import pickle

    import torch

    from fedsim.checkpoint import CheckpointError, load_checkpoint

    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps({"format": 1, "strategy": _Payload(marker)}))  # the payload is live under pickle...
    assert marker.is_dir()
    marker.rmdir()

    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "checkpoint.pt").write_bytes(pickle.dumps({"format": 1, "strategy": _Payload(marker)}))  # the old format
    with pytest.raises(CheckpointError, match="raw pickle"):
        load_checkpoint(folder)
    assert not marker.exists()
    torch.save({"fedsim_checkpoint": 2, "state": "{}", "tensors": {"0": _Payload(marker)}}, folder / "checkpoint.pt")
    # ...and in the new container
    with pytest.raises(CheckpointError, match="holds objects other than tensors and plain data"):
        load_checkpoint(folder)
    assert not marker.exists()


def _checkpointed_run(run_quietly):
    _, folder = run_quietly("num_clients=3", "num_rounds=1", "strategy=feddisco")
    (folder / "summary.json").unlink()  # as if killed after its last checkpoint
    return folder


def test_a_broken_checkpoint_is_one_line_saying_how_to_start_over(run_quietly):
    import torch

    from fedsim.checkpoint import CheckpointError, load_checkpoint

    folder = _checkpointed_run(run_quietly)
    path = folder / "checkpoint.pt"
    whole = path.read_bytes()
    assert load_checkpoint(folder).server_round == 1
    other_version = io.BytesIO()
    torch.save({"fedsim_checkpoint": 3, "state": "{}", "tensors": {}}, other_version)
    cases = [(whole[: len(whole) // 2], "is truncated or damaged"), (b"", "is empty"),
             (b"hello", "is not a fedsim checkpoint"),
             (other_version.getvalue(),
              "was written by another fedsim version (checkpoint format 3; this one reads 2)")]
    for content, problem in cases:
        path.write_bytes(content)
        with pytest.raises(CheckpointError) as raised:
            load_checkpoint(folder)
        message = str(raised.value)
        assert "\n" not in message and message.startswith(f"{path} {problem}")
        assert "delete it to restart the run from round 1" in message


def test_fedsim_resume_of_a_truncated_checkpoint_exits_2_with_one_line(run_quietly, capsys):
    from fedsim.cli import main

    folder = _checkpointed_run(run_quietly)
    whole, rows = (folder / "checkpoint.pt").read_bytes(), (folder / "metrics.csv").read_bytes()
    (folder / "checkpoint.pt").write_bytes(whole[:1000])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["resume", str(folder)])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exit_info.value.code == 2 and len(lines) == 1, lines
    assert "checkpoint.pt is truncated or damaged" in lines[0] and "delete it" in lines[0]
    assert (folder / "metrics.csv").read_bytes() == rows  # nothing ran: the folder is as it was
    assert (folder / "checkpoint.pt").read_bytes() == whole[:1000]


def test_checkpoint_values_round_trip_exactly_and_other_objects_are_refused_by_name(tmp_path):
    import threading

    import numpy as np
    import torch
    from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

    from fedsim.checkpoint import load_checkpoint, save_checkpoint

    class Holder:
        pass

    strategy = Holder()
    strategy.weights = {3: 0.25, 7: float("nan")}
    strategy.histograms = {1001: np.array([3.0, 0.0, 5.0])}
    strategy.seen = {4, 9}
    strategy.betas = (0.5, 0.999)
    strategy.scalar = np.float32(0.1)
    strategy.odd_keys = {"$": 1, "plain": [np.int64(2), None, True]}
    strategy.blob = b"\x00\xff"
    strategy.current = ArrayRecord({"w": Array(np.arange(6, dtype=np.float32).reshape(2, 3))})
    strategy.aggregate = lambda values: values  # code: rebuilt from the config, never saved
    nodes = {1001: RecordDict({"m": MetricRecord({"mean": 0.5, "count": 2}), "c": ConfigRecord({"s": "x", "b": b"1"}),
                               "a": ArrayRecord({"v": Array(np.ones(2, dtype=np.float64))})})}
    from fedsim.checkpoint import capture

    checkpoint = capture(4, ArrayRecord({"w": Array(np.zeros(3, dtype=np.float32))}), strategy, {"rows": [{"a": 1.5}]},
                         nodes)
    save_checkpoint(tmp_path, checkpoint)
    loaded = load_checkpoint(tmp_path)
    attributes = loaded.strategy_state["attributes"]
    assert set(attributes) == {"weights", "histograms", "seen", "betas", "scalar", "odd_keys", "blob", "current"}
    assert attributes["weights"][3] == 0.25 and np.isnan(attributes["weights"][7])
    np.testing.assert_array_equal(attributes["histograms"][1001], [3.0, 0.0, 5.0])
    assert attributes["seen"] == {4, 9} and attributes["betas"] == (0.5, 0.999) and attributes["blob"] == b"\x00\xff"
    assert type(attributes["scalar"]) is np.float32 and attributes["scalar"] == np.float32(0.1)
    assert attributes["odd_keys"] == {"$": 1, "plain": [2, None, True]}
    assert type(attributes["odd_keys"]["plain"][0]) is np.int64
    np.testing.assert_array_equal(attributes["current"]["w"].numpy(), np.arange(6, dtype=np.float32).reshape(2, 3))
    node = loaded.node_states[1001]
    assert dict(node["m"]) == {"mean": 0.5, "count": 2} and dict(node["c"]) == {"s": "x", "b": b"1"}
    assert node["a"]["v"].numpy().dtype == np.float64 and loaded.python_random == checkpoint.python_random
    assert torch.equal(loaded.torch_random, checkpoint.torch_random)
    assert all(np.array_equal(a, b) for a, b in zip(loaded.numpy_random, checkpoint.numpy_random, strict=True))

    strategy.lock = threading.Lock()
    with pytest.raises(TypeError, match=r"strategy\['lock'\] is a _thread.lock, which cannot be saved"):
        save_checkpoint(tmp_path, capture(5, checkpoint.arrays, strategy, {}, None))


def test_a_deployed_run_meets_a_broken_checkpoint_on_the_same_path(run_quietly):
    """The deployed ServerApp decides to continue through `existing_run`, which loads the checkpoint as a simulation
    does: a broken one is the same one line, in the run's log, before any round."""
    import yaml

    from fedsim.checkpoint import CheckpointError
    from fedsim.deploy.server_app import existing_run

    folder = _checkpointed_run(run_quietly)
    experiment = yaml.safe_load((folder / "config.yaml").read_text())
    assert existing_run(folder, experiment) is True
    (folder / "checkpoint.pt").write_bytes((folder / "checkpoint.pt").read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="checkpoint.pt is truncated or damaged"):
        existing_run(folder, experiment)
