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


def give_nodes_config(monkeypatch: pytest.MonkeyPatch, extras: dict[int, dict[str, Any]]) -> None:
    """Make every in-process run of this test give partition p's node the node-config entries `extras[p]`, as a
    SuperNode's `--node-config` would (e.g. a node told to `misbehave`)."""
    import fedsim.run

    make_engine = fedsim.run.make_engine

    def engine_with_node_config(*args: Any, **kwargs: Any):
        engine = make_engine(*args, **kwargs)
        engine.node_config_extras = extras
        return engine

    monkeypatch.setattr(fedsim.run, "make_engine", engine_with_node_config)
