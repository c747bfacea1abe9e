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
    assert contribution_overrides(["strategy=fedavg", "strategy.mode=times", "seed=3"]) == [
        "strategy.mode=times", "seed=3", "strategy=fedce"]


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
    assert report["reference"] == "clients" and full["choices"]["strategy"] == "fedce"
    assert report["full_accuracy"] == full["client_accuracy"]["mean"]
    last = read_metrics(out / "full")[-1]
    assert [c["client"] for c in report["clients"]] == [0, 1, 2, 3]
    for c in report["clients"]:
        without = json.loads((out / f"without_{c['client']}" / "summary.json").read_text())
        assert c["accuracy_without"] == without["client_accuracy"]["mean"]
        assert without["client_accuracy"]["clients"] == 4  # the left-out client's own split is scored too
        assert c["loo_contribution"] == pytest.approx(report["full_accuracy"] - c["accuracy_without"], abs=1e-12)
        assert c["fedce_weight"] == pytest.approx(float(last[f"weight_client_{c['client']}"]))
    assert sum(c["fedce_weight"] for c in report["clients"]) == pytest.approx(1.0)
    assert sum(c["fedce_weight_mean"] for c in report["clients"]) == pytest.approx(1.0)
    r, _ = pearson([c["fedce_weight"] for c in report["clients"]], [c["loo_contribution"] for c in report["clients"]])
    assert report["pearson"]["final_weight"] == (None if r is None else pytest.approx(r))
    captured = capsys.readouterr()
    printed = captured.err + captured.out  # progress lines on stderr, the table on stdout
    assert "[1/5] full federation" in printed and "[5/5] without client 3" in printed and "Pearson" in printed


def test_contribution_can_take_the_pooled_test_split_as_reference(tmp_path):
    from fedsim.contribution import run_contribution

    experiment = compose_experiment(["num_clients=3", "num_rounds=1", "strategy=fedce", "progress=false"])
    report = run_contribution(experiment, tmp_path, reference="test")
    full = json.loads((tmp_path / "full" / "summary.json").read_text())
    without = json.loads((tmp_path / "without_1" / "summary.json").read_text())
    assert report["reference"] == "test" and report["full_accuracy"] == full["final_accuracy"]
    assert report["clients"][1]["loo_contribution"] == pytest.approx(full["final_accuracy"] - without["final_accuracy"])


def test_contribution_refuses_an_unknown_reference(tmp_path, capsys):
    from fedsim.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["contribution", "num_clients=3", "--reference", "val", "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "--reference val: one of clients, test" in capsys.readouterr().err
    assert not (tmp_path / "full").exists()


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


def test_linear_label_noise_spreads_the_rate_from_zero_to_the_last_listed_client():
    import torch

    from fedsim.data import ArrayDataset
    from fedsim.data.noise import label_noise_rates, with_label_noise

    experiment = {"seed": 0, "label_noise": {"clients": [3, 0, 1, 2, 4], "rate": 0.8, "profile": "linear"}}
    assert label_noise_rates(experiment) == pytest.approx({3: 0.0, 0: 0.2, 1: 0.4, 2: 0.6, 4: 0.8})
    assert label_noise_rates({"label_noise": {"clients": [1, 2], "rate": 0.3}}) == {1: 0.3, 2: 0.3}
    data = ArrayDataset(torch.zeros(1000, 1), torch.zeros(1000, dtype=torch.long))
    assert with_label_noise(data, experiment, 3, 2) is data  # the first listed client stays clean
    wrong = [int((with_label_noise(data, experiment, pid, 2).y != 0).sum()) for pid in (0, 1, 2, 4)]
    assert wrong == sorted(wrong) and 350 <= wrong[-1] <= 450  # 800 relabelled, half of them to the other class


def test_feature_noise_adds_seeded_gaussian_noise_to_every_split_of_the_listed_clients():
    import torch

    from fedsim.data import ArrayDataset
    from fedsim.data.noise import with_feature_noise

    data = ArrayDataset(torch.zeros(4000, 3), torch.arange(4000) % 10, torch.arange(4000) % 2)
    experiment = {"seed": 0, "feature_noise": {"clients": [1], "std": 0.5}}
    train, val = (with_feature_noise(data, experiment, 1, split) for split in (0, 1))
    for noisy in (train, val):
        assert float(noisy.x.mean()) == pytest.approx(0.0, abs=0.02)
        assert float(noisy.x.std()) == pytest.approx(0.5, rel=0.03)
        assert torch.equal(noisy.y, data.y) and torch.equal(noisy.sensitive, data.sensitive)
    assert not torch.equal(train.x, val.x)  # independent draws per split
    assert torch.equal(with_feature_noise(data, experiment, 1, 0).x, train.x)  # the same every round
    assert with_feature_noise(data, experiment, 0, 0) is data


def test_a_noisy_client_trains_and_is_scored_on_its_noisy_data():
    from fedsim.data.client_data import client_data
    from fedsim.data.federation import build_federation

    experiment = compose_experiment(["num_clients=3", "feature_noise.clients=[2]", "feature_noise.std=0.3",
                                     "label_noise.clients=[2]", "label_noise.rate=0.5"])
    federation = build_federation(experiment)
    clean_train, clean_val = federation.client_split(2)
    train, val = client_data(federation, experiment, 2)
    assert float((train.x - clean_train.x).std()) == pytest.approx(0.3, rel=0.1)
    assert float((val.x - clean_val.x).std()) == pytest.approx(0.3, rel=0.1)
    assert (train.y != clean_train.y).any() and (val.y == clean_val.y).all()  # label noise: training rows only
    other_train, _ = client_data(federation, experiment, 0)
    assert other_train.x is federation.client_split(0)[0].x or (other_train.x == federation.client_split(0)[0].x).all()


@pytest.mark.parametrize("override, key", [("label_noise.rate=1.5", "label_noise.rate"),
                                           ("label_noise.clients=[4]", "label_noise.clients"),
                                           ("label_noise.profile=steps", "label_noise.profile"),
                                           ("feature_noise.std=-1", "feature_noise.std"),
                                           ("feature_noise.clients=[0,0]", "feature_noise.clients")])
def test_label_noise_is_validated(override, key):
    with pytest.raises(ConfigError, match=key):
        validate(compose_experiment(["num_clients=4", override]))
