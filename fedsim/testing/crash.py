"""A fedsim run killed with SIGKILL after a given round, for checking that `fedsim resume` ends where the same run
left alone ends: metrics.csv row by row, its timing columns aside."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ..checkpoint import CHECKPOINT_FILE
from ..recorder import METRICS_FILE, SUMMARY_FILE, TIMING_COLUMNS, TRAFFIC_COLUMNS

# Slow clients (a sleep, no change to any number), so that a kill lands inside a short run rather than after it.
SLOW_CLIENTS = ("faults.slow_rate=1.0", "faults.slow_seconds=0.15")


def untimed_metrics(run_dir: Path) -> list[dict[str, str]]:
    """The rows of a run's metrics.csv without the timing columns and the byte counts (a resumed run discovers its
    nodes and resends its round again: it moved more bytes): what a resumed run must reproduce exactly."""
    with open(run_dir / METRICS_FILE, newline="") as stream:
        return [{k: v for k, v in row.items() if k not in (*TIMING_COLUMNS, *TRAFFIC_COLUMNS)}
                for row in csv.DictReader(stream)]


def kill_during(run_dir: Path, overrides: Sequence[str], at_round: int, deadline_s: float = 120.0) -> None:
    """Start `fedsim` in a subprocess and SIGKILL it once `at_round` rounds are in metrics.csv and a checkpoint is
    on disk (metrics.csv is written just before the round's checkpoint, so waiting for both keeps the kill from
    landing before the first checkpoint, where resuming would simply start over). Raises RuntimeError where the run
    ended before it could be killed."""
    process = subprocess.Popen([sys.executable, "-m", "fedsim.cli", *overrides, f"hydra.run.dir={run_dir}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + deadline_s
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if (run_dir / CHECKPOINT_FILE).exists() and len(untimed_metrics(run_dir)) > at_round:
                os.killpg(process.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    summary = run_dir / SUMMARY_FILE
    if process.returncode != -signal.SIGKILL or (summary.exists() and json.loads(summary.read_text()).get("complete")):
        raise RuntimeError(f"the run in {run_dir} ended before it could be killed after round {at_round}")
