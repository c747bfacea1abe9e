"""Checkpoint and resume: a run killed with SIGKILL at a random round and resumed with `fedsim resume` ends with the
same metrics, round by round, as the same run left alone."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from fedsim.config import compose_experiment
from fedsim.run import run_experiment

TIMING = {"round_seconds", "wall_seconds"}
# Slow clients (a sleep, no change to any number) so that the kill lands inside the run, not after it.
BASE = ["num_clients=4", "num_rounds=6", "fraction_train=0.5", "faults.slow_rate=1.0", "faults.slow_seconds=0.15",
        "progress=false"]


def _metrics(folder):
    with open(folder / "metrics.csv", newline="") as stream:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(stream)]


def _kill_during(folder, overrides, at_round):
    """Start `fedsim` in a subprocess and SIGKILL it once `at_round` rounds are in metrics.csv and a checkpoint is
    on disk (metrics.csv is written just before the round's checkpoint, so waiting for both keeps the kill from
    landing before the first checkpoint, where resuming would simply start over)."""
    process = subprocess.Popen([sys.executable, "-m", "fedsim.cli", *overrides, f"hydra.run.dir={folder}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if (folder / "checkpoint.pt").exists() and len(_metrics(folder)) > at_round:
                os.killpg(process.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not json.loads((folder / "summary.json").read_text()).get("complete") if (folder / "summary.json").exists() else True


@pytest.mark.parametrize("strategy", ["fedavg", "fedce", "feddisco"])
def test_a_run_killed_at_a_random_round_resumes_to_the_same_result(tmp_path, strategy):
    overrides = [*BASE, f"strategy={strategy}"]
    reference_dir = tmp_path / "reference"
    reference = run_experiment(compose_experiment(overrides), reference_dir, show_progress=False)

    at_round = random.Random(strategy).randint(1, 4)
    killed = tmp_path / "killed"
    _kill_during(killed, overrides, at_round)
    assert (killed / "checkpoint.pt").exists()

    completed = subprocess.run([sys.executable, "-m", "fedsim.cli", "resume", str(killed)], capture_output=True,
                               text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    resumed = json.loads((killed / "summary.json").read_text())
    assert _metrics(killed) == _metrics(reference_dir)  # every round, every client, every weight
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


def test_a_strategy_that_cannot_be_pickled_turns_checkpoints_off_not_the_run(run_quietly, monkeypatch, caplog):
    import fedsim.server as server_module

    def refuse(*args, **kwargs):
        raise TypeError("cannot pickle 'memoryview' object")

    monkeypatch.setattr(server_module, "save_checkpoint", refuse)
    summary, folder = run_quietly("num_clients=3", "num_rounds=2")
    assert summary["rounds_completed"] == 2 and not (folder / "checkpoint.pt").exists()
    assert sum("checkpoints turned off" in r.getMessage() for r in caplog.records) == 1
