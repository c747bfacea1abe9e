"""Shared helpers: compose experiments as the CLI does, and run them quietly into a temporary folder."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from fedsim.config import compose_experiment
from fedsim.run import run_experiment


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as stream:
        return list(csv.DictReader(stream))


@pytest.fixture
def run_quietly(tmp_path: Path):
    """Run an experiment from overrides; returns (summary, run folder)."""

    def _run(*overrides: str, name: str = "run") -> tuple[dict[str, Any], Path]:
        experiment = compose_experiment(["progress=false", *overrides])
        run_dir = tmp_path / name
        return run_experiment(experiment, run_dir, show_progress=False), run_dir

    return _run
