"""Golden runs: fedsim's behaviour pinned before the redesign (issue "every extension point lives in what it extends").

Each run's `metrics.csv`, every column but the timing ones, is compared with the copy under `tests/golden/`:
every configured strategy on the in-process engine, FedAvg and FedProx with stragglers on the vectorized engine, a
run with injected faults, and a run stopped after round 2 and resumed from its checkpoint. Moving code must leave
every value as it is.

Floats are compared to 1e-6 relative by default, because another CPU's kernels may round differently in the last
bits while any change of behaviour moves them by far more; `FEDSIM_GOLDEN_EXACT=1` compares the text exactly (the
check to run on one machine before and after a refactoring). `FEDSIM_GOLDEN_WRITE=1` writes the files; do that
only for a deliberate change of behaviour, and say why in the commit.

A run may add columns the golden file lacks only where the redesign added reporting without changing a value: every
fedsim strategy now reports its aggregation weights (FedAvg and FedProx did not) and its straggler count (FedCE,
FairFed and q-FFL had no stragglers). Every golden column must be there with its value.
"""

from __future__ import annotations

import csv
import math
import os
import re
from pathlib import Path

import pytest

from fedsim.config import compose_experiment, group_options
from fedsim.run import run_experiment

from .conftest import stop_after_checkpoint

GOLDEN = Path(__file__).parent / "golden"
SHORT = ["num_clients=4", "num_rounds=3", "fraction_train=0.75", "client.local_epochs=1", "progress=false"]
# What a strategy needs beyond the short run: FairFed a sensitive attribute, FedLAW fewer server epochs.
STRATEGY_EXTRAS = {
    "fairfed": ["dataset=fair_synthetic", "dataset.num_samples=400", "model=logreg"],
    "fedlaw": ["strategy.server_epochs=2"],
    "fedprox": ["strategy.proximal_mu=0.1"],
}
# reporting added since the pin: FedAvg's weights, the stragglers, the disparity audit (data with a sensitive
# attribute), the virtual clock, the bytes on the wire
ADDED_COLUMNS = re.compile(r"^(stragglers|sim_time|(total_)?bytes_(down|up)|weight_client_\d+"
                           r"|disparity_(global|local|unique|redundant|masked|z_s|yhat_s))$")
RUNS = {
    # The strategies pinned before the redesign; one added later may add a golden file of its own.
    **{f"inprocess_{strategy}": [f"strategy={strategy}", *STRATEGY_EXTRAS.get(strategy, [])]
       for strategy in group_options("strategy") if (GOLDEN / f"inprocess_{strategy}.csv").exists()},
    "vectorized_fedavg_stragglers": ["engine=vectorized", "strategy=fedavg", "stragglers.fraction=0.5",
                                     "client.local_epochs=2"],
    "vectorized_fedprox_stragglers": ["engine=vectorized", "strategy=fedprox", "strategy.proximal_mu=0.1",
                                      "stragglers.fraction=0.5", "client.local_epochs=2"],
    "inprocess_faults": ["strategy=fedavg", "faults.crash_rate=0.4", "faults.nan_rate=0.25"],
}


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    return [{k: v for k, v in row.items() if not k.endswith("_seconds")} for row in rows]  # round_, wall_seconds


def _write(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _same(value: str, expected: str) -> bool:
    if value == expected or os.environ.get("FEDSIM_GOLDEN_EXACT") == "1":
        return value == expected
    try:
        a, b = float(value), float(expected)
    except ValueError:
        return False
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def _check(name: str, run_dir: Path) -> None:
    rows, path = _rows(run_dir), GOLDEN / f"{name}.csv"
    if os.environ.get("FEDSIM_GOLDEN_WRITE") == "1":
        _write(path, rows)
    assert path.exists(), f"no golden file {path}: write it with FEDSIM_GOLDEN_WRITE=1"
    with open(path, newline="") as stream:
        expected = list(csv.DictReader(stream))
    assert len(rows) == len(expected), name
    missing = [key for key in expected[0] if key not in rows[0]]
    added = [key for key in rows[0] if key not in expected[0] and not ADDED_COLUMNS.match(key)]
    assert not missing and not added, f"{name}: columns missing {missing}, added {added}"
    for number, (row, golden) in enumerate(zip(rows, expected, strict=True)):
        differing = {key: (row[key], golden[key]) for key in golden if not _same(row[key], golden[key])}
        assert not differing, f"{name}, row {number}: (now, golden) {differing}"


@pytest.mark.parametrize("name", sorted(RUNS))
def test_golden_run(tmp_path, name):
    run_experiment(compose_experiment([*SHORT, *RUNS[name]]), tmp_path / name, show_progress=False)
    _check(name, tmp_path / name)


def test_golden_resumed_run(tmp_path, monkeypatch):
    """FedCE (client state kept between rounds) stopped after round 2 and resumed from its checkpoint file."""
    overrides = [*SHORT, "strategy=fedce"]
    stop_after_checkpoint(monkeypatch, overrides, tmp_path / "run", 2)  # a kill right after round 2's checkpoint
    run_experiment(compose_experiment(overrides), tmp_path / "run", show_progress=False, resume=True)
    _check("inprocess_fedce_resumed", tmp_path / "run")


def test_every_golden_file_is_checked():
    pinned = {path.stem for path in GOLDEN.glob("*.csv")}
    assert pinned == {*RUNS, "inprocess_fedce_resumed"}
    assert {f"inprocess_{s}" for s in ("fedavg", "fedprox", "feddisco", "qffl", "fedce", "fairfed", "fedlaw")} <= pinned
