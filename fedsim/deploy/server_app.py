"""The ServerApp body under Flower's Deployment Runtime: the same experiment as a simulation, from the run config.

`flwr run` carries two run-config keys (see `[tool.flwr.app.config]` in pyproject.toml):
- `overrides`: the Hydra overrides of the experiment, exactly as on the `fedsim` command line;
- `run-dir`: where the run folder goes on the SuperLink's machine (default `outputs/deploy/<time>_run<id>`).
The run folder is the one a simulation writes (`metrics.csv`, `summary.json`, ...) plus `deployment.json` (how
the run was submitted, so `fedsim resume` can submit it again), and every round is logged as one line, which
`flwr run --stream` / `flwr log` show.

A `run-dir` that already holds a run is never overwritten: the same experiment continues from its checkpoint, and
anything else (a finished run, another experiment, finished rounds without a checkpoint) is refused in one line.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid

from ..errors import FedsimError
from ..recorder import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, Recorder, RoundRecord, write_atomic

OVERRIDES_KEY = "overrides"
RUN_DIR_KEY = "run-dir"
DEPLOYMENT_FILE = "deployment.json"
LOCK_FILE = ".run.lock"


def overrides_from_run_config(run_config: Mapping[str, Any]) -> list[str]:
    """The experiment's Hydra overrides: one shell-quoted string, so values may hold spaces."""
    return shlex.split(str(run_config.get(OVERRIDES_KEY, "") or ""))


def run_dir_from_run_config(run_config: Mapping[str, Any], run_id: int) -> Path:
    configured = str(run_config.get(RUN_DIR_KEY, "") or "")
    if configured:
        return Path(configured).expanduser()
    return Path("outputs") / "deploy" / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_run{run_id}"


class LoggingRecorder(Recorder):
    """A Recorder that also prints one line per round, for `flwr run --stream` (no progress bar in a log), and
    records how the run was submitted."""

    def record_deployment(self, overrides: list[str], run_id: int) -> None:
        """`deployment.json`: the overrides and run folder to submit again (`fedsim resume`), and every Flower run
        id that worked on this folder."""
        path = self.run_dir / DEPLOYMENT_FILE
        previous = json.loads(path.read_text()).get("flower_run_ids", []) if path.exists() else []
        record = {"overrides": overrides, "run_dir": str(self.run_dir.resolve()), "flower_run_ids": [*previous, run_id]}
        write_atomic(path, json.dumps(record, indent=2).encode())

    def record_round(self, record: RoundRecord) -> dict[str, Any]:
        row = super().record_round(record)
        total = int(self.experiment["num_rounds"])
        print(
            f"fedsim: round {record.server_round}/{total} test_accuracy={record.test_accuracy:.4f} "
            f"test_loss={record.test_loss:.4f} train_clients={row['train_clients']} failures={row['failures']}",
            flush=True,
        )
        return row


_LOCKS: list[Any] = []  # open lock files: held for the life of the ServerApp process


def _lock(run_dir: Path) -> None:
    """One ServerApp per run folder: a second submission with the same run-dir while the first runs is refused."""
    import fcntl

    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / LOCK_FILE, "w")  # pylint: disable=consider-using-with  # kept open until the process ends
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise FedsimError(f"run-dir {run_dir} is in use by a run still going: wait for it (flwr ls), "
                          "or choose another run-dir") from None
    _LOCKS.append(handle)


def existing_run(run_dir: Path, experiment: Mapping[str, Any]) -> bool:
    """Whether the run goes on from a checkpoint in `run_dir` (True) or starts at round 1 (False); a one-line
    FedsimError when `run_dir` holds something that must not be overwritten."""
    import yaml

    from ..checkpoint import CHECKPOINT_FILE, load_checkpoint
    from ..config import resolve_auto_values

    config_file = run_dir / CONFIG_FILE
    if not config_file.exists():
        return False
    summary_file = run_dir / SUMMARY_FILE
    if summary_file.exists() and json.loads(summary_file.read_text()).get("complete"):
        raise FedsimError(f"run-dir {run_dir} already holds a finished run: choose another run-dir")
    stored = yaml.safe_load(config_file.read_text())
    wanted = json.loads(json.dumps(resolve_auto_values(experiment)))
    if stored != wanted:
        differ = _differing_keys(stored, wanted)
        shown = ", ".join(differ[:5]) + (f" and {len(differ) - 5} more" if len(differ) > 5 else "")
        raise FedsimError(f"run-dir {run_dir} holds a run of another experiment (it differs in {shown}): "
                          "choose another run-dir, or submit that run's own overrides to continue it")
    if (run_dir / CHECKPOINT_FILE).exists():
        load_checkpoint(run_dir)  # a broken one: CheckpointError, one line in the run's log before any round
        return True
    rounds = _finished_rounds(run_dir / METRICS_FILE)
    if rounds:
        raise FedsimError(f"run-dir {run_dir} has {rounds} finished round{'s' * (rounds != 1)} but no checkpoint "
                          "(server.checkpoint_every=0), so it cannot continue: choose another run-dir")
    return False


def _differing_keys(stored: Any, wanted: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the config entries in which two experiments differ."""
    if not isinstance(stored, dict) or not isinstance(wanted, dict):
        return [prefix] if stored != wanted else []
    keys = sorted(set(stored) | set(wanted))
    return [path for key in keys
            for path in _differing_keys(stored.get(key), wanted.get(key), f"{prefix}.{key}" if prefix else f"{key}")]


def _finished_rounds(metrics: Path) -> int:
    if not metrics.exists():
        return 0
    import csv

    with open(metrics, newline="") as stream:
        return sum(1 for row in csv.DictReader(stream) if int(row["round"]) > 0)


def run_deployed(grid: Grid, context: Context) -> dict[str, Any]:
    """Compose, validate and run (or continue) the experiment the run config names; returns the run's summary."""
    from flwr.superlink.grid import http_grid

    from ..config import compose_experiment
    from ..run import describe_choices, prepare_run
    from ..server import run_server
    from .grid import PromptGrid
    from .pacing import prompt_object_pulls

    prompt_object_pulls(http_grid)  # the replies' objects, pulled from the SuperLink (fedsim.deploy.pacing)
    run_dir = run_dir_from_run_config(context.run_config, context.run_id)
    overrides = overrides_from_run_config(context.run_config)
    try:
        _lock(run_dir)
        experiment = compose_experiment(overrides)
        resume = existing_run(run_dir, experiment)
        choices = {**describe_choices(experiment), "engine": "deployment"}  # the config's engine group plays no part
        experiment, recorder = prepare_run(experiment, run_dir, choices, recorder_class=LoggingRecorder)
    except FedsimError as error:  # one line first in the run's log (`flwr log`); Flower marks the run failed with it
        print(f"fedsim: error: {error}", file=sys.stderr, flush=True)
        raise
    assert isinstance(recorder, LoggingRecorder)
    recorder.record_deployment(overrides, context.run_id)
    print(f"fedsim: {'continuing the run in' if resume else 'run folder'} {run_dir.resolve()}", flush=True)
    summary = run_server(PromptGrid(grid), experiment, recorder, show_progress=False, resume=resume,
                         arrival_order="real")
    print(f"fedsim: finished, final test accuracy {summary['final_accuracy']:.4f}; run folder {run_dir.resolve()}",
          flush=True)
    return summary
