"""Experiment tracking: what TensorBoard, MLflow and W&B hold, read back with each library's own reader, is metrics.csv.

The tests marked `tracking` need the trackers (`pip install -e '.[tracking]'`) and run as their own CI step
(`pytest -m tracking`); the others check, without any tracker installed, the one-line refusal of a missing one and
the bookkeeping every tracker shares.
"""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedsim import cli
from fedsim.config import compose_experiment
from fedsim.errors import ConfigError
from fedsim.recorder import TIMING_COLUMNS, TRAFFIC_COLUMNS, Recorder, RoundRecord
from fedsim.run import run_experiment
from fedsim.tracking import LIBRARIES, STATE_FILE, LibraryTracker, flatten, split_row, validate_tracking

from .conftest import read_metrics

RUN = ["num_clients=3", "num_rounds=3", "client.local_epochs=1", "progress=false"]


# --- without the libraries ---------------------------------------------------------------------------------


@pytest.mark.parametrize("tracker", sorted(LIBRARIES))
def test_a_tracker_that_is_not_installed_is_one_line_and_exit_2_before_any_work(tracker, monkeypatch, tmp_path, capsys):
    module, extra = LIBRARIES[tracker]
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails as if the package were absent
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        cli.main([f"tracking={tracker}", "num_rounds=1", f"hydra.run.dir={run_dir}"])
    assert stopped.value.code == 2
    out = capsys.readouterr()
    lines = (out.out + out.err).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fedsim: error: tracking={tracker} needs the {extra} package")
    assert f"pip install 'fedsim[{extra}]'" in lines[0]
    assert not run_dir.exists()  # refused at validation: no run folder, no data loaded


def test_bad_tracking_values_name_the_key():
    with pytest.raises(ConfigError, match=r"tracking='comet' is not allowed: one of mlflow, none, tensorboard, wandb"):
        compose_experiment(["tracking=comet"])
    bad = {"tracking.name": {"name": "comet"}, "tracking.mode": {"name": "wandb", "mode": "cloud"},
           "tracking.experiment": {"name": "mlflow", "experiment": ""},
           "tracking.dir": {"name": "tensorboard", "dir": 3}}
    for key, settings in bad.items():  # checked before the library is imported: these fail with or without it
        with pytest.raises(ConfigError) as refused:
            validate_tracking({"tracking": settings})
        assert refused.value.key == key
    validate_tracking({"tracking": {"name": "none"}})
    validate_tracking({})  # a run folder from before trackers existed


def test_rows_split_into_numbers_and_texts_and_configs_flatten():
    row = {"round": 2, "test_accuracy": 0.5, "train_loss": None, "train_clients": 3, "sampled": "0 2", "skipped": 0,
           "acc_client_1": "", "test_loss": float("nan")}
    numbers, texts = split_row(row)
    assert texts == {"sampled": "0 2"}
    assert set(numbers) == {"test_accuracy", "train_clients", "skipped", "test_loss"}  # no step, no empty cell
    assert numbers["train_clients"] == 3.0 and math.isnan(numbers["test_loss"])
    assert split_row({"round": 0, "sampled": ""}) == ({}, {})
    config = {"seed": 0, "client": {"lr": 0.1, "local_debiasing": "none"}, "exclude_clients": [],
              "partition": {"alpha": [0.1, 1]}, "server": {"max_update_norm": None}, "label_noise": {}}
    assert flatten(config) == {"seed": "0", "client.lr": "0.1", "client.local_debiasing": "none",
                               "exclude_clients": "[]", "partition.alpha": "[0.1, 1]",
                               "server.max_update_norm": "null", "label_noise": "{}"}


class FakeTracker(LibraryTracker):
    """A library tracker that keeps what it is sent, for the bookkeeping every tracker shares."""

    name = "fake"
    sessions: list[dict[str, Any]] = []

    def _open(self, first_round: int, resuming: bool) -> None:
        self.session = {"first_round": first_round, "resuming": resuming, "steps": [], "finished": False}
        self.sessions.append(self.session)

    def _log(self, step: int, numbers: dict[str, float], texts: dict[str, str]) -> None:
        if numbers.get("test_accuracy") == -1:
            raise OSError("the tracking server is gone")
        self.session["steps"].append((step, numbers["test_accuracy"]))

    def _finish(self) -> None:
        self.session["finished"] = True


def _row(step: int, accuracy: float) -> dict[str, Any]:
    return {"round": step, "test_accuracy": accuracy}


def test_a_restart_continues_the_tracked_run_without_logging_a_round_twice(tmp_path):
    FakeTracker.sessions = []
    first = FakeTracker(tmp_path, {}, {})
    for step in range(4):
        first.log_round(_row(step, step / 10))
    # stopped after round 3; the checkpoint was at round 1, so rounds 2 and 3 run again
    assert json.loads((tmp_path / STATE_FILE).read_text())["logged_through"] == 3
    second = FakeTracker(tmp_path, {}, {})
    for step in range(2, 6):
        second.log_round(_row(step, step / 10 + 1))
    second.close()
    assert FakeTracker.sessions == [
        {"first_round": 0, "resuming": False, "steps": [(0, 0.0), (1, 0.1), (2, 0.2), (3, 0.3)], "finished": False},
        {"first_round": 2, "resuming": True, "steps": [(4, 1.4), (5, 1.5)], "finished": True},
    ]
    FakeTracker.relogs = True  # a library that replaces what a restart logs again (TensorBoard's purge_step)
    try:
        third = FakeTracker(tmp_path, {}, {})
        third.log_round(_row(5, 2.5))
    finally:
        FakeTracker.relogs = False
    assert FakeTracker.sessions[-1]["steps"] == [(5, 2.5)] and FakeTracker.sessions[-1]["first_round"] == 5


def test_a_failing_tracker_turns_itself_off_and_the_run_goes_on(tmp_path, caplog):
    FakeTracker.sessions = []
    tracker = FakeTracker(tmp_path, {}, {})
    for row in (_row(0, 0.1), _row(1, -1), _row(2, 0.3)):
        tracker.log_round(row)
    tracker.close()
    assert FakeTracker.sessions[0]["steps"] == [(0, 0.1)] and not FakeTracker.sessions[0]["finished"]
    assert "tracking=fake turned off for the rest of the run (OSError: the tracking server is gone)" in caplog.text


def test_tracking_none_leaves_no_trace(tmp_path):
    recorder = Recorder(tmp_path, compose_experiment(["num_clients=3"]), 3, {})
    recorder.record_round(RoundRecord(0, 0.1, 2.3))
    recorder.finish({})
    assert not (tmp_path / STATE_FILE).exists() and type(recorder.tracker).__name__ == "Tracker"


# --- with the libraries: real runs, read back -------------------------------------------------------------

NO_TRACKER_LIBRARY_LOADED = """
import sys
from fedsim.config import compose_experiment, validate
from fedsim.recorder import Recorder, RoundRecord
experiment = compose_experiment(["num_clients=3"])
validate(experiment)
recorder = Recorder({folder!r}, experiment, 3, {{}})
recorder.record_round(RoundRecord(0, 0.1, 2.3))
print([name for name in ("tensorboard", "torch.utils.tensorboard", "mlflow", "wandb") if name in sys.modules])
"""


@pytest.mark.tracking
def test_tracking_none_loads_no_tracker_library(tmp_path):
    code = NO_TRACKER_LIBRARY_LOADED.format(folder=str(tmp_path / "run"))
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.strip().splitlines()[-1] == "[]"


class Stop(Exception):
    """Ends a run right after a round is recorded, as a crash would."""


def _run_stopped_after(monkeypatch, run_dir: Path, overrides: list[str], last_round: int) -> Recorder:
    """Run until `last_round` is recorded (and tracked), then stop; the checkpoint is the round before."""
    recorders: list[Recorder] = []
    original = Recorder.record_round

    def record_then_stop(self, record):
        row = original(self, record)
        if record.server_round == last_round:
            recorders.append(self)
            raise Stop
        return row

    with monkeypatch.context() as patch:
        patch.setattr(Recorder, "record_round", record_then_stop)
        with pytest.raises(Exception) as stopped:
            run_experiment(compose_experiment(overrides), run_dir, show_progress=False)
    assert recorders, f"the run did not stop at round {last_round}: {stopped.value!r}"
    return recorders[0]


def _tensorboard(state: dict[str, Any]) -> dict[str, list[tuple[int, Any]]]:
    """Every tag's (step, value) list, as TensorBoard itself loads the run (restarts' purges applied)."""
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    accumulator = EventAccumulator(state["location"], size_guidance={"tensors": 0})
    accumulator.Reload()
    values: dict[str, list[tuple[int, Any]]] = {}
    for tag in accumulator.Tags()["tensors"]:
        for event in accumulator.Tensors(tag):
            array = tensor_util.make_ndarray(event.tensor_proto)
            value = array.item().decode() if array.dtype == object else float(array)
            values.setdefault(tag.removesuffix("/text_summary"), []).append((event.step, value))
    return values


def _mlflow(state: dict[str, Any]) -> tuple[dict[str, list[tuple[int, Any]]], Any, Any]:
    """Every metric's history, the run, and the client, from the MLflow store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=state["location"])
    run = client.get_run(state["run_id"])
    values = {key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
              for key in run.data.metrics}
    return values, run, client


def _wandb_records(path: Path):
    """The records of a `.wandb` file (W&B's append-only log: LevelDB-style 32 KiB blocks of chunked records after
    a 7-byte header), decoded with W&B's own protobuf schema. wandb 0.2x dropped its Python reader of this file."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, position, pending = 32 * 1024, 7, b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # too little room left for a header: the block is padded
            position += block - position % block
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if length == 0 and kind == 0:
            position += block - position % block
            continue
        chunk = data[position + 7:position + 7 + length]
        position += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk  # 1 full, 2 first, 3 middle, 4 last
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def _wandb(state: dict[str, Any]) -> tuple[dict[str, list[tuple[int, Any]]], list[Any]]:
    """History (key -> (step, value) list) and run records of every offline folder of the run, in order."""
    values: dict[str, list[tuple[int, Any]]] = {}
    runs = []
    folders = sorted(Path(state["location"], "wandb").glob(f"offline-run-*-{state['run_id']}"))
    for folder in folders:
        for record in _wandb_records(folder / f"run-{state['run_id']}.wandb"):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                runs.append(record.run)
            elif kind == "history":
                for item in record.history.item:
                    key = item.key or "/".join(item.nested_key)  # W&B writes either form
                    if not key.startswith("_"):
                        values.setdefault(key, []).append((record.history.step.num, json.loads(item.value_json)))
    return values, runs


def _assert_tracked_is_metrics_csv(tracked: dict[str, list[tuple[int, Any]]], rows: list[dict[str, str]],
                                   texts: bool, rel: float, first_values_kept: set[int] = frozenset()) -> None:
    """Each metrics.csv cell is tracked once at step = round (an empty cell not at all) with the same value;
    nothing else is tracked. `first_values_kept`: rounds a restart ran again, tracked with their first timings and
    byte counts (the re-run also carries the restart's start-up query, so its bytes differ)."""
    columns = [column for column in rows[0] if column != "round"]
    assert set(tracked) - {"config"} <= set(columns)
    for row in rows:
        step = int(row["round"])
        for column in columns:
            if column == "sampled" and not texts:
                continue
            points = [value for at, value in tracked.get(column, []) if at == step]
            if row[column] == "":
                assert points == [], (column, step)
                continue
            assert len(points) == 1, (column, step, points)
            if column == "sampled":
                assert points[0] == row[column]
            elif column in (*TIMING_COLUMNS, *TRAFFIC_COLUMNS) and step in first_values_kept:
                assert points[0] > 0
            elif math.isnan(float(row[column])):
                assert math.isnan(points[0])
            else:
                assert points[0] == pytest.approx(float(row[column]), rel=rel, abs=1e-12), (column, step)
    assert max(at for points in tracked.values() for at, _ in points) == int(rows[-1]["round"])


@pytest.mark.tracking
@pytest.mark.parametrize("tracker", ["tensorboard", "mlflow", "wandb"])
def test_a_stopped_and_resumed_run_is_tracked_once_per_round_as_in_metrics_csv(tracker, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))  # W&B's settings and caches stay here
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    run_dir = tmp_path / "run"
    overrides = [*RUN, f"tracking={tracker}"]
    stopped = _run_stopped_after(monkeypatch, run_dir, overrides, last_round=2)
    before = json.loads((run_dir / STATE_FILE).read_text())
    assert before["logged_through"] == 2 and before["tracker"] == tracker
    if tracker == "wandb":
        stopped.tracker._run.finish(exit_code=1)  # pylint: disable=protected-access  # what the process's exit does
    summary = run_experiment(yaml.safe_load((run_dir / "config.yaml").read_text()), run_dir, show_progress=False,
                             resume=True)
    assert summary["rounds_completed"] == 3
    state = json.loads((run_dir / STATE_FILE).read_text())
    kept = [key for key in before if key != "logged_through"]
    assert {key: state[key] for key in kept} == {key: before[key] for key in kept}
    assert state["logged_through"] == 3
    rows = read_metrics(run_dir)
    assert [row["round"] for row in rows] == ["0", "1", "2", "3"]
    config = yaml.safe_load((run_dir / "config.yaml").read_text())

    if tracker == "tensorboard":
        tracked = _tensorboard(state)
        assert Path(state["location"]) == run_dir.resolve() / "tensorboard"
        _assert_tracked_is_metrics_csv(tracked, rows, texts=True, rel=1e-6)  # float32 scalars; round 2 is the re-run's
        [(step, text)] = tracked["config"]
        assert step == 0 and yaml.safe_load(text.removeprefix("```yaml\n").removesuffix("```")) == config
    elif tracker == "mlflow":
        tracked, run, client = _mlflow(state)
        _assert_tracked_is_metrics_csv(tracked, rows, texts=False, rel=1e-12, first_values_kept={2})
        assert run.info.status == "FINISHED" and run.info.run_name == state["run_name"]
        assert run.data.params == {key: value[:6000] for key, value in flatten(config).items()}
        assert run.data.tags["strategy"] == "fedavg" and run.data.tags["fedsim.run_dir"] == str(run_dir.resolve())
        assert len(client.search_runs([run.info.experiment_id])) == 1
        artifacts = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "artifacts")))
        assert (artifacts / "metrics.csv").read_text() == (run_dir / "metrics.csv").read_text()
        assert yaml.safe_load((artifacts / "config.yaml").read_text()) == config
        assert state["location"] == f"sqlite:///{run_dir.resolve() / 'mlflow' / 'mlflow.db'}"
    else:
        tracked, runs = _wandb(state)
        _assert_tracked_is_metrics_csv(tracked, rows, texts=True, rel=1e-12, first_values_kept={2})
        assert len(runs) == 2 and {r.run_id for r in runs} == {state["run_id"]}  # two sessions of one run
        assert all(r.project == "fedsim" and r.display_name == state["run_name"] for r in runs)
        logged_config = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in runs[0].config.update}
        logged_config.pop("_wandb", None)
        assert logged_config == json.loads(json.dumps(config))


@pytest.mark.tracking
@pytest.mark.parametrize("tracker", ["tensorboard", "mlflow"])
def test_runs_sharing_a_tracking_dir_are_separate_runs_there(tracker, tmp_path):
    shared = tmp_path / "shared"
    for seed in (0, 1):
        run_dir = tmp_path / "runs" / f"seed{seed}"
        experiment = compose_experiment([*RUN, "num_rounds=1", f"seed={seed}", f"tracking={tracker}",
                                         f"tracking.dir={shared}"])
        run_experiment(experiment, run_dir, show_progress=False)
    states = [json.loads((tmp_path / "runs" / f"seed{seed}" / STATE_FILE).read_text()) for seed in (0, 1)]
    accuracies = [[float(row["test_accuracy"]) for row in read_metrics(tmp_path / "runs" / f"seed{seed}")]
                  for seed in (0, 1)]
    assert accuracies[0] != accuracies[1]
    if tracker == "tensorboard":
        assert [Path(state["location"]) for state in states] == [shared.resolve() / state["run_name"]
                                                                 for state in states]
        assert states[0]["location"] != states[1]["location"] and states[1]["run_name"].endswith("runs/seed1")
        for state, accuracy in zip(states, accuracies, strict=True):
            assert [value for _, value in _tensorboard(state)["test_accuracy"]] == pytest.approx(accuracy, rel=1e-6)
    else:
        assert states[0]["location"] == states[1]["location"] == f"sqlite:///{shared.resolve() / 'mlflow.db'}"
        _, run, client = _mlflow(states[0])
        assert {r.info.run_id for r in client.search_runs([run.info.experiment_id])} == {s["run_id"] for s in states}
        for state, accuracy in zip(states, accuracies, strict=True):
            assert [value for _, value in _mlflow(state)[0]["test_accuracy"]] == pytest.approx(accuracy, rel=1e-12)
