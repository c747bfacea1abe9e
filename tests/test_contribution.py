"""Leaving clients out (`exclude_clients`) and the `fedsim contribution` report (FedCE weight vs leave-one-out)."""

from __future__ import annotations

import json

import pytest

from fedsim.config import compose_experiment, validate
from fedsim.contribution import contribution_overrides, pearson
from fedsim.errors import ConfigError
from tests.conftest import read_metrics


@pytest.mark.parametrize("value", ["[4]", "[1,1]", "[-1]", "[0,1,2,3]", "3"])
def test_exclude_clients_is_validated(value):
    with pytest.raises(ConfigError, match="exclude_clients"):
        validate(compose_experiment(["num_clients=4", f"exclude_clients={value}"]))


def test_excluded_client_never_trains_but_is_evaluated_at_the_end(run_quietly):
    summary, run_dir = run_quietly("strategy=fedce", "num_clients=4", "num_rounds=2", "exclude_clients=[1]")
    rows = [row for row in read_metrics(run_dir) if int(row["round"]) > 0]
    assert all(row["sampled"] == "0 2 3" and row["eval_clients"] == "3" for row in rows)
    assert all(row["weight_client_1"] == "" and row["acc_client_1"] == "" for row in rows)
    assert sum(float(rows[-1][f"weight_client_{k}"]) for k in (0, 2, 3)) == pytest.approx(1.0)
    assert summary["client_accuracy"]["clients"] == 4  # the final per-client evaluation includes everyone


def test_contribution_forces_fedce_and_keeps_its_keys():
    assert contribution_overrides(["strategy=fedavg", "strategy.mode=times", "seed=3"]) == ["strategy.mode=times", "seed=3", "strategy=fedce"]


def test_pearson_is_undefined_for_constant_inputs():
    assert pearson([1, 2, 3], [2, 4, 6])[0] == pytest.approx(1.0)
    assert pearson([1, 2, 3], [-1, -2, -3])[0] == pytest.approx(-1.0)
    assert pearson([1, 1, 1], [1, 2, 3]) == (None, None)


def test_contribution_command_writes_a_consistent_report(tmp_path, capsys):
    from fedsim.cli import main

    out = tmp_path / "contribution"
    main(["contribution", "num_clients=4", "num_rounds=2", "strategy=fedavg", "--out", str(out)])
    report = json.loads((out / "contribution.json").read_text())
    assert (out / "contribution.png").stat().st_size > 1000
    full = json.loads((out / "full" / "summary.json").read_text())
    assert report["full_accuracy"] == full["final_accuracy"] and full["choices"]["strategy"] == "FedCE"
    last = read_metrics(out / "full")[-1]
    assert [c["client"] for c in report["clients"]] == [0, 1, 2, 3]
    for c in report["clients"]:
        without = json.loads((out / f"without_{c['client']}" / "summary.json").read_text())
        assert c["accuracy_without"] == without["final_accuracy"]
        assert c["loo_contribution"] == pytest.approx(report["full_accuracy"] - c["accuracy_without"], abs=1e-12)
        assert c["fedce_weight"] == pytest.approx(float(last[f"weight_client_{c['client']}"]))
    assert sum(c["fedce_weight"] for c in report["clients"]) == pytest.approx(1.0)
    assert sum(c["fedce_weight_mean"] for c in report["clients"]) == pytest.approx(1.0)
    r, _ = pearson([c["fedce_weight"] for c in report["clients"]], [c["loo_contribution"] for c in report["clients"]])
    assert report["pearson"]["final_weight"] == (None if r is None else pytest.approx(r))
    printed = capsys.readouterr().err
    assert "[1/5] full federation" in printed and "[5/5] without client 3" in printed and "Pearson" in printed


def test_label_noise_relabels_a_seeded_share_of_the_listed_clients_rows():
    import torch

    from fedsim.data import ArrayDataset
    from fedsim.data.noise import with_label_noise

    data = ArrayDataset(torch.arange(200.0).reshape(200, 1), torch.arange(200) % 10)
    experiment = {"seed": 0, "label_noise": {"clients": [2], "rate": 0.5}}
    noisy = with_label_noise(data, experiment, 2, 10)
    changed = int((noisy.y != data.y).sum())
    assert 70 <= changed <= 100  # 100 rows redrawn, each keeps its label with chance 1/10
    assert torch.equal(noisy.x, data.x) and torch.equal(with_label_noise(data, experiment, 2, 10).y, noisy.y)
    assert with_label_noise(data, experiment, 1, 10) is data
    assert not torch.equal(with_label_noise(data, {**experiment, "seed": 1}, 2, 10).y, noisy.y)

    fair = ArrayDataset(data.x, data.y, torch.arange(200) % 2)
    assert torch.equal(with_label_noise(fair, experiment, 2, 10).sensitive, fair.sensitive)  # A is kept


@pytest.mark.parametrize("override, key", [("label_noise.rate=1.5", "label_noise.rate"), ("label_noise.clients=[4]", "label_noise.clients")])
def test_label_noise_is_validated(override, key):
    with pytest.raises(ConfigError, match=key):
        validate(compose_experiment(["num_clients=4", override]))
