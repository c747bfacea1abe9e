"""The same seed gives the same metrics on every engine (float tolerance only)."""

from __future__ import annotations

import pytest

from fedsim.engines import FlowerEngine, InProcessEngine, make_engine

from .conftest import read_metrics


def test_make_engine_by_name():
    assert isinstance(make_engine({"name": "inprocess"}), InProcessEngine)
    engine = make_engine({"name": "flower", "client_resources": {"num_cpus": 1, "num_gpus": 0.5}})
    assert isinstance(engine, FlowerEngine) and engine.client_resources == {"num_cpus": 1.0, "num_gpus": 0.5}


@pytest.mark.ray
def test_inprocess_and_flower_runtime_agree(run_quietly):
    overrides = ("num_rounds=3", "num_clients=6", "fraction_train=0.5", "seed=11")
    local, local_dir = run_quietly(*overrides, "engine=inprocess", name="inprocess")
    ray, ray_dir = run_quietly(*overrides, "engine=flower", name="flower")
    local_rows, ray_rows = read_metrics(local_dir), read_metrics(ray_dir)
    assert [r["sampled"] for r in local_rows] == [r["sampled"] for r in ray_rows]  # same clients each round
    for a, b in zip(local_rows, ray_rows):
        assert float(a["test_loss"]) == pytest.approx(float(b["test_loss"]), rel=1e-5)
        assert float(a["test_accuracy"]) == pytest.approx(float(b["test_accuracy"]), abs=1e-9)
        if a["train_loss"]:
            assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), rel=1e-5)
    assert local["client_accuracy"]["mean"] == pytest.approx(ray["client_accuracy"]["mean"], rel=1e-6)


@pytest.mark.ray
@pytest.mark.parametrize("strategy", [
    ("strategy=fedprox", "strategy.proximal_mu=0.5", "stragglers.fraction=0.5"),
    ("strategy=feddisco", "stragglers.fraction=0.5"),
    ("strategy=fedlaw", "strategy.server_epochs=2"),
    ("strategy=qffl", "strategy.q=1"),
    ("strategy=fedce", "num_rounds=3"),  # clients keep state (last local model, running mean) across rounds
    ("strategy=fairfed", "dataset=fair_synthetic", "model=logreg", "partition.partition_by=sensitive"),
])
def test_every_strategy_runs_the_same_on_both_engines(run_quietly, strategy):
    overrides = ("num_rounds=2", "num_clients=4", "seed=2", "client.local_epochs=2", *strategy)
    local, local_dir = run_quietly(*overrides, "engine=inprocess", name="inprocess")
    ray, ray_dir = run_quietly(*overrides, "engine=flower", name="flower")
    local_rows, ray_rows = read_metrics(local_dir), read_metrics(ray_dir)
    weight_columns = [c for c in local_rows[1]
                      if c.startswith("weight_client_") or c in ("gamma", "stragglers", "qffl_step", "test_eod")]
    assert weight_columns, "the strategy's round report reaches metrics.csv"
    for a, b in zip(local_rows, ray_rows):
        assert a["sampled"] == b["sampled"]
        assert float(a["test_loss"]) == pytest.approx(float(b["test_loss"]), rel=1e-5)
        for column in weight_columns:
            if a[column]:
                assert float(a[column]) == pytest.approx(float(b[column]), rel=1e-5, abs=1e-7)
