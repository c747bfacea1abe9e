"""`fedsim resume <deployed run folder>`: continue a deployed run on its federation, never as a simulation.

A deployed run folder holds `deployment.json` (its overrides and run folder, written by the ServerApp). Resuming
submits the same overrides with the same `run-dir` again; the ServerApp then continues from the folder's checkpoint
(`fedsim.deploy.server_app.existing_run`). Where the federation is:
- a run of `fedsim deploy local --out DIR` (its folder is `DIR/run`, the federation's `DIR/federation`): that local
  federation is started again from its folder, with the same certificates, node keys and SuperLink state;
- any other: the operator's SuperLink connection (`--federation NAME`, default: the default connection of
  `$FLWR_HOME/config.toml`, usually `~/.flwr/config.toml`), from the server machine. If the SuperLink does not
  answer, resuming stops with one line and the run folder is left as it is.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import DeployError
from .local_federation import FEDERATION_FILE, LocalFederation, submit_run, write_installed_app, write_run_config
from .processes import flower_command
from .server_app import DEPLOYMENT_FILE

REACH_TIMEOUT = 30.0


def is_deployed_run(folder: Path) -> bool:
    return (Path(folder) / DEPLOYMENT_FILE).is_file()


def local_federation_of(folder: Path) -> Path | None:
    """The work folder of the `fedsim deploy local` federation that ran this run, if it was one."""
    candidate = Path(folder).resolve().parent / "federation"
    return candidate if (candidate / FEDERATION_FILE).is_file() else None


def resume_deployed(folder: Path, federation: str | None = None, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Submit the run in `folder` again so that it continues from its checkpoint; returns the run's summary."""
    record = json.loads((Path(folder) / DEPLOYMENT_FILE).read_text())
    overrides, run_dir = list(record["overrides"]), Path(record["run_dir"])
    local = local_federation_of(folder) if federation is None else None
    if local is not None:
        from .processes import install_signal_handlers

        install_signal_handlers()
        say(f"restarting the local federation in {local}")
        with LocalFederation.restart(local, say=say) as running:
            return running.submit(overrides, run_dir, on_line=say)
    connection = federation or ""
    _check_reachable(connection)
    with tempfile.TemporaryDirectory(prefix="fedsim-resume-") as temporary:
        app = write_installed_app(Path(temporary) / "app")
        run_config = write_run_config(Path(temporary) / "run-config.toml", overrides, run_dir)
        command = [*flower_command("flwr"), "run", str(app), *([connection] if connection else []),
                   "--run-config", str(run_config), "--stream"]
        return submit_run(command, {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}, run_dir, Path.cwd(), on_line=say,
                          flwr=flower_command("flwr"), connection=connection)


def _check_reachable(connection: str) -> None:
    """One line, and nothing submitted, when the operator's SuperLink does not answer `flwr ls`."""
    name = f"connection {connection!r}" if connection else "the default connection of $FLWR_HOME/config.toml"
    try:
        completed = subprocess.run([*flower_command("flwr"), "ls", *([connection] if connection else []),
                                    "--format", "json"], capture_output=True, text=True, timeout=REACH_TIMEOUT,
                                   check=False, env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"})
        answer = json.loads(completed.stdout) if completed.stdout.strip().startswith("{") else {}
        problem = (None if answer.get("success")
                   else (answer.get("error-message") or completed.stderr or completed.stdout))
    except subprocess.TimeoutExpired:
        problem = f"no answer within {REACH_TIMEOUT:.0f} s"
    if problem is not None:
        reason = [line.strip() for line in str(problem).splitlines()
                  if line.strip() and not line.startswith("Using SuperLink")]
        raise DeployError(f"cannot reach the federation's SuperLink through {name} "
                          f"({reason[-1] if reason else problem}): this run was deployed, so it continues only on its "
                          "federation: start the SuperLink (fedsim deploy server), check `flwr ls`, then run fedsim "
                          "resume again (--federation NAME picks a connection)")
