"""The ServerApp body under Flower's Deployment Runtime: the same experiment as a simulation, from the run config.

`flwr run` carries two run-config keys (see `[tool.flwr.app.config]` in pyproject.toml):
- `overrides`: the Hydra overrides of the experiment, exactly as on the `fedsim` command line;
- `run-dir`: where the run folder goes on the SuperLink's machine (default `outputs/deploy/<time>_run<id>`).
The run folder is the one a simulation writes (`metrics.csv`, `summary.json`, ...), and every round is logged as
one line, which `flwr run --stream` / `flwr log` show.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid

from ..errors import FedsimError
from ..results import Recorder

OVERRIDES_KEY = "overrides"
RUN_DIR_KEY = "run-dir"


def overrides_from_run_config(run_config: Mapping[str, Any]) -> list[str]:
    """The experiment's Hydra overrides: one shell-quoted string, so values may hold spaces."""
    return shlex.split(str(run_config.get(OVERRIDES_KEY, "") or ""))


def run_dir_from_run_config(run_config: Mapping[str, Any], run_id: int) -> Path:
    configured = str(run_config.get(RUN_DIR_KEY, "") or "")
    if configured:
        return Path(configured).expanduser()
    return Path("outputs") / "deploy" / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_run{run_id}"


class LoggingRecorder(Recorder):
    """A Recorder that also prints one line per round, for `flwr run --stream` (no progress bar in a log)."""

    def record_round(self, server_round: int, test_accuracy: float, test_loss: float, *args: Any, **kwargs: Any) -> dict[str, Any]:
        row = super().record_round(server_round, test_accuracy, test_loss, *args, **kwargs)
        total = int(self.experiment["num_rounds"])
        print(
            f"fedsim: round {server_round}/{total} test_accuracy={test_accuracy:.4f} test_loss={test_loss:.4f} "
            f"train_clients={row['train_clients']} failures={row['failures']}",
            flush=True,
        )
        return row


def run_deployed(grid: Grid, context: Context) -> dict[str, Any]:
    """Compose, validate and run the experiment the run config names; returns the run's summary."""
    from ..config import compose_experiment
    from ..run import describe_choices, prepare_run
    from ..server import run_server

    run_dir = run_dir_from_run_config(context.run_config, context.run_id)
    try:
        experiment = compose_experiment(overrides_from_run_config(context.run_config))
        choices = {**describe_choices(experiment), "engine": "deployment"}  # the config's engine group plays no part
        experiment, recorder = prepare_run(experiment, run_dir, choices, recorder_class=LoggingRecorder)
    except FedsimError as error:  # one line first in the run's log (`flwr log`); Flower marks the run failed with it
        print(f"fedsim: error: {error}", file=sys.stderr, flush=True)
        raise
    print(f"fedsim: run folder {run_dir.resolve()}", flush=True)
    summary = run_server(grid, experiment, recorder, show_progress=False)
    print(f"fedsim: finished, final test accuracy {summary['final_accuracy']:.4f}; run folder {run_dir.resolve()}", flush=True)
    return summary
