"""End-to-end runs: the main job reaches its accuracy; the same seed gives the same run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from .conftest import read_metrics


def test_main_job_reaches_090(run_quietly):
    """`fedsim` with no overrides: FedAvg, digits, 10 clients, Dirichlet(0.5), 20 rounds, MLP."""
    summary, run_dir = run_quietly()
    assert summary["final_accuracy"] >= 0.90
    assert summary["rounds_completed"] == 20 and summary["client_accuracy"]["clients"] == 10
    rows = read_metrics(run_dir)
    assert len(rows) == 21 and float(rows[0]["test_accuracy"]) < 0.3  # round 0 is the untrained model
    assert all(row["train_clients"] == "10" for row in rows[1:])
    assert {"config.yaml", "metrics.csv", "summary.json", "accuracy.png"} <= {p.name for p in run_dir.iterdir()}
    assert json.loads((run_dir / "summary.json").read_text())["final_accuracy"] == summary["final_accuracy"]


def test_reduced_main_job_learns(run_quietly):
    summary, _ = run_quietly("num_rounds=5")
    assert summary["final_accuracy"] >= 0.75


def test_same_seed_same_metrics_other_seed_other_metrics(run_quietly):
    overrides = ("num_rounds=3", "fraction_train=0.5")
    first, first_dir = run_quietly(*overrides, "seed=5", name="a")
    second, second_dir = run_quietly(*overrides, "seed=5", name="b")
    third, third_dir = run_quietly(*overrides, "seed=6", name="c")
    columns = ("test_accuracy", "test_loss", "train_loss", "sampled")
    rows_a, rows_b = read_metrics(first_dir), read_metrics(second_dir)
    assert [[r[c] for c in columns] for r in rows_a] == [[r[c] for c in columns] for r in rows_b]
    assert [r["sampled"] for r in rows_a] != [r["sampled"] for r in read_metrics(third_dir)]
    assert all(len(r["sampled"].split()) == 5 for r in rows_a[1:])


def test_fedprox_strategy_changes_the_client_update(run_quietly):
    """strategy=fedprox sends proximal-mu; with a large mu the clients' models stay near the global one."""
    fedavg, _ = run_quietly("num_rounds=2", name="fedavg")
    fedprox, _ = run_quietly("num_rounds=2", "strategy=fedprox", "strategy.proximal_mu=10.0", name="fedprox")
    assert fedprox["final_accuracy"] != fedavg["final_accuracy"]


@pytest.mark.slow
@pytest.mark.parametrize("overrides, floor", [
    (("dataset=synthetic", "partition=natural", "num_clients=30", "model=logreg", "num_rounds=20",
      "fraction_train=0.34", "client.lr=0.01", "client.momentum=0", "client.batch_size=10", "client.local_epochs=5"),
     0.55),
    (("model=cnn", "num_rounds=8"), 0.85),
    (("partition=pathological", "num_rounds=10"), 0.5),
])
def test_other_settings_learn(run_quietly, overrides, floor):
    summary, _ = run_quietly(*overrides)
    assert summary["final_accuracy"] >= floor


def test_tiny_clients_still_evaluate(run_quietly):
    """With about 1.4 samples per client, single-sample clients evaluate on their one training row."""
    summary, run_dir = run_quietly("num_clients=1000", "partition=iid", "num_rounds=1", "fraction_train=0.01",
                                   "fraction_evaluate=0.01", "model=logreg")
    assert summary["client_accuracy"]["clients"] == 1000
    assert read_metrics(run_dir)[1]["train_clients"] == "10"


def test_stragglers_are_dropped_by_fedavg_and_kept_by_fedprox(run_quietly):
    _, avg_dir = run_quietly("num_rounds=2", "stragglers.fraction=0.5", name="avg")
    _, prox_dir = run_quietly("num_rounds=2", "stragglers.fraction=0.5", "strategy=fedprox", name="prox")
    avg_rows, prox_rows = read_metrics(avg_dir)[1:], read_metrics(prox_dir)[1:]
    assert all(r["train_clients"] == "5" and r["stragglers"] == "5.0" for r in avg_rows)
    assert all(r["train_clients"] == "10" and r["stragglers"] == "5.0" for r in prox_rows)
    for a, p in zip(avg_rows, prox_rows, strict=True):  # the active clients FedAvg keeps are among FedProx's cohort
        assert set(a["sampled"].split()) <= set(p["sampled"].split())


def test_feddisco_weights_and_fedlaw_gamma_are_logged(run_quietly):
    _, disco_dir = run_quietly("num_rounds=2", "strategy=feddisco", name="disco")
    rows = read_metrics(disco_dir)
    weights = [float(rows[1][f"weight_client_{i}"]) for i in range(10)]
    assert sum(weights) == pytest.approx(1.0) and rows[0]["weight_client_0"] == ""
    summary, law_dir = run_quietly("num_rounds=2", "strategy=fedlaw", name="law")
    rows = read_metrics(law_dir)
    assert float(rows[1]["gamma"]) > 0
    assert sum(float(rows[2][f"weight_client_{i}"]) for i in range(10)) == pytest.approx(1.0)
    assert summary["final_accuracy"] > 0.3


def test_fedlaw_proxy_set_is_carved_before_partitioning():
    from fedsim.config import compose_experiment
    from fedsim.data import build_federation

    law = build_federation(compose_experiment(["strategy=fedlaw"]))
    assert len(law.proxy_rows) == 200
    assert np.bincount(law.data.train_arrays.y.numpy()[law.proxy_rows]).tolist() == [20] * 10  # class-balanced
    clients = np.concatenate(law.client_indices)
    assert len(np.intersect1d(clients, law.proxy_rows)) == 0 and len(clients) + 200 == len(law.data.train)
    avg = build_federation(compose_experiment(["strategy=fedavg"]))
    assert len(avg.proxy_rows) == 0
    fair = build_federation(compose_experiment(["strategy=fedavg", "server.proxy_size=200"]))
    # the same partition
    assert all(np.array_equal(a, b) for a, b in zip(fair.client_indices, law.client_indices, strict=True))
