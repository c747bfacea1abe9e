"""Fairness data and metrics: group counts, SPD and EOD against hand computations; the fair_synthetic generator's
statistics; Adult's preprocessing and its one-line offline error; test_spd/test_eod in a run folder."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fedsim.config import compose_experiment, validate
from fedsim.data import ArrayDataset, adult, build_federation, load_data
from fedsim.data.fair_synthetic import generate_fair_synthetic
from fedsim.errors import ConfigError, DataError
from fedsim.fairness import GroupCounts, fairness_summary, group_counts, model_group_counts, pooled

# 10 examples: (a, y, prediction)
ROWS = [(0, 1, 1), (0, 1, 1), (0, 1, 0), (0, 0, 1), (0, 0, 0),
        (1, 1, 1), (1, 1, 0), (1, 1, 0), (1, 1, 0), (1, 0, 0)]


def _counts() -> GroupCounts:
    a, y, p = (np.array(column) for column in zip(*ROWS, strict=True))
    return group_counts(p, y, a)


def test_group_counts_spd_eod_by_hand():
    """A=0: 5 rows, 3 predicted positive, of its 3 Y=1 rows 2 are; A=1: 5 rows, 1 positive, of 4 Y=1 rows 1 is.
    SPD = 3/5 - 1/5 = 0.4; EOD = 2/3 - 1/4 = 5/12; correct: A=0: 2 of Y=1 + 1 of Y=0, A=1: 1 + 1, so 5 of 10."""
    counts = _counts()
    assert counts.total.tolist() == [[2, 3], [1, 4]]
    assert counts.positive.tolist() == [[1, 2], [0, 1]]
    assert counts.correct == 5 and counts.accuracy == pytest.approx(0.5)
    assert counts.spd() == pytest.approx(0.4)
    assert counts.eod() == pytest.approx(2 / 3 - 1 / 4)
    assert counts.metric("eod") == counts.eod() and counts.metric("spd") == counts.spd()


def test_counts_add_and_travel_through_a_metric_record():
    counts = _counts()
    back = GroupCounts.from_metrics(counts.to_metrics())
    assert back.total.tolist() == counts.total.tolist() and back.positive.tolist() == counts.positive.tolist()
    assert back.correct == counts.correct
    doubled = counts + counts
    assert doubled.total.tolist() == [[4, 6], [2, 8]] and doubled.spd() == pytest.approx(0.4)
    assert GroupCounts.from_metrics({"eval_accuracy": 0.5}) is None


def test_fairness_summary_and_pooled_counts():
    one_group = group_counts(np.array([1, 0]), np.array([1, 1]), np.array([0, 0]))
    summary = fairness_summary(_counts(), {1: one_group, 0: _counts()})
    assert summary["test_spd"] == pytest.approx(0.4) and summary["test_eod"] == pytest.approx(5 / 12)
    assert list(summary["clients"]) == ["0", "1"]
    assert summary["clients"]["1"] == {"spd": None, "eod": None, "accuracy": 0.5}
    assert pooled([_counts(), one_group]).total.tolist() == [[2, 5], [1, 4]]


def test_a_missing_group_gives_nan():
    only_group_0 = group_counts(np.array([1, 0]), np.array([1, 0]), np.array([0, 0]))
    assert np.isnan(only_group_0.spd()) and np.isnan(only_group_0.eod())
    no_positive_label_in_group_1 = group_counts(np.array([1, 0, 1]), np.array([1, 0, 0]), np.array([0, 0, 1]))
    assert no_positive_label_in_group_1.spd() == pytest.approx(0.5 - 1.0)
    assert np.isnan(no_positive_label_in_group_1.eod())


def test_model_group_counts_uses_argmax_predictions():
    model = torch.nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[-1.0], [1.0]]))  # predicts 1 exactly when x > 0
    a, y, p = (np.array(column) for column in zip(*ROWS, strict=True))
    x = torch.tensor(np.where(p == 1, 1.0, -1.0), dtype=torch.float32)[:, None]
    data = ArrayDataset(x, torch.from_numpy(y), torch.from_numpy(a))
    counts = model_group_counts(model, data, torch.device("cpu"), batch_size=3)
    assert counts.positive.tolist() == _counts().positive.tolist() and counts.correct == 5


def test_subset_carries_the_sensitive_attribute():
    data = ArrayDataset(torch.zeros(4, 2), torch.tensor([0, 1, 0, 1]), torch.tensor([1, 1, 0, 0]))
    assert data.subset(np.array([3, 0])).sensitive.tolist() == [0, 1]
    assert ArrayDataset(torch.zeros(2, 2), torch.tensor([0, 1])).subset(np.array([1])).sensitive is None


def test_fair_synthetic_statistics():
    """P(Y=1 | A=0) = 0.5 + c/2 and P(Y=1 | A=1) = 0.5 - c/2; A is visible in x; same seed, same data."""
    x, y, a = generate_fair_synthetic(20000, 10, 0.6, 0.3, 1.0, 1.0, seed=3)
    assert x.shape == (20000, 10) and x.dtype == np.float32
    assert a.mean() == pytest.approx(0.3, abs=0.015)
    assert y[a == 0].mean() == pytest.approx(0.8, abs=0.015) and y[a == 1].mean() == pytest.approx(0.2, abs=0.02)
    again = generate_fair_synthetic(20000, 10, 0.6, 0.3, 1.0, 1.0, seed=3)
    assert np.array_equal(x, again[0])
    assert not np.array_equal(x, generate_fair_synthetic(20000, 10, 0.6, 0.3, 1.0, 1.0, 4)[0])
    # the group means differ by 2 * leak along a unit direction, the class means by 2 * signal along another
    gap_a = x[a == 1].mean(0) - x[a == 0].mean(0)
    assert np.linalg.norm(gap_a) > 1.0  # 2 leak = 2, diluted by the label direction only through Y's dependence on A


def test_fair_synthetic_can_shift_its_test_split():
    from fedsim.data.fair_synthetic import load_fair_synthetic_data

    same = load_fair_synthetic_data(20000, 10, 0.6, 0.5, 1.0, 2.0, 0.25, seed=1)
    shifted = load_fair_synthetic_data(20000, 10, 0.6, 0.5, 1.0, 2.0, 0.25, seed=1, test_correlation=0.0,
                                       test_sensitive_share=0.2)
    assert torch.equal(same.train_arrays.x, shifted.train_arrays.x)  # training rows untouched
    assert len(shifted.test_arrays) == len(same.test_arrays) == 5000
    a, y = shifted.test_arrays.sensitive.numpy(), shifted.test_arrays.y.numpy()
    assert a.mean() == pytest.approx(0.2, abs=0.02)
    assert y[a == 0].mean() == pytest.approx(0.5, abs=0.03) and y[a == 1].mean() == pytest.approx(0.5, abs=0.05)
    a0, y0 = same.test_arrays.sensitive.numpy(), same.test_arrays.y.numpy()
    assert y0[a0 == 0].mean() == pytest.approx(0.8, abs=0.03)  # unshifted: P(Y=1 | A=0) = 0.5 + 0.6/2


def test_fair_synthetic_partitions_by_the_sensitive_attribute():
    experiment = compose_experiment(["dataset=fair_synthetic", "partition.partition_by=sensitive",
                                     "partition.alpha=0.1", "num_clients=5"])
    validate(experiment)
    federation = build_federation(experiment)
    data = federation.data
    assert data.train.column_names == ["x", "label", "sensitive"]
    assert data.num_classes == 2 and data.input_shape == (10,)
    assert len(data.train) == 8000 and len(data.test_arrays) == 2000
    assert np.array_equal(np.asarray(data.train["sensitive"]), data.train_arrays.sensitive.numpy())
    shares = [float(data.train_arrays.sensitive[rows].float().mean()) for rows in federation.client_indices]
    assert min(shares) < 0.2 and max(shares) > 0.8  # Dirichlet(0.1) over A: some clients hold nearly one group
    train, val = federation.client_split(0)
    assert train.sensitive is not None and val.sensitive is not None


@pytest.mark.parametrize("key,value", [("dataset.correlation", 1.0), ("dataset.sensitive_share", 0.0),
                                       ("dataset.dim", 1), ("dataset.test_correlation", 1.0),
                                       ("dataset.test_sensitive_share", 0.0)])
def test_fair_synthetic_config_is_validated(key, value):
    experiment = compose_experiment(["dataset=fair_synthetic", f"{key}={value}"])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(experiment)


def test_adult_offline_is_one_line(monkeypatch):
    monkeypatch.setattr(adult, "_openml_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(adult, "_cached", lambda: False)
    with pytest.raises(DataError) as error:
        load_data(compose_experiment(["dataset=adult"])["dataset"], seed=0)
    message = str(error.value)
    assert "\n" not in message and message.startswith("dataset=adult cannot be fetched") and "fair_synthetic" in message


def test_adult_preprocessing_on_a_small_frame():
    rng = np.random.default_rng(0)
    n = 40
    frame = pd.DataFrame({
        "age": rng.integers(18, 80, n).astype(float),
        "workclass": pd.Categorical(rng.choice(["Private", "State-gov", None], n)),
        "sex": pd.Categorical(np.where(np.arange(n) % 2 == 0, "Male", "Female")),
        "class": pd.Categorical(np.where(np.arange(n) % 4 < 2, ">50K", "<=50K")),
    })
    data = adult.adult_from_frame(frame, test_fraction=0.25, seed=0)
    assert len(data.train_arrays) == 30 and len(data.test_arrays) == 10 and data.num_classes == 2
    x = data.train_arrays.x.numpy()
    assert x[:, 0].mean() == pytest.approx(0.0, abs=1e-5) and x[:, 0].std() == pytest.approx(1.0, abs=1e-4)
    # age + workclass one-hot (3 incl. missing) + sex one-hot (2)
    assert x.shape[1] == 1 + 3 + 2
    rows = np.arange(n)
    assert data.train_arrays.sensitive.sum() + data.test_arrays.sensitive.sum() == (rows % 2 == 0).sum()
    assert data.train_arrays.y.sum() + data.test_arrays.y.sum() == (rows % 4 < 2).sum()


def test_runs_record_test_spd_and_eod(run_quietly):
    summary, run_dir = run_quietly("dataset=fair_synthetic", "partition.partition_by=sensitive", "num_clients=5",
                                   "num_rounds=2", "model=logreg")
    from tests.conftest import read_metrics

    rows = read_metrics(run_dir)
    assert all(row["test_spd"] != "" and row["test_eod"] != "" for row in rows)
    fairness = summary["fairness"]
    assert fairness["test_spd"] == pytest.approx(float(rows[-1]["test_spd"]))
    assert fairness["test_eod"] == pytest.approx(float(rows[-1]["test_eod"]))
    assert set(fairness["clients"]) == {str(pid) for pid in range(5)}
    assert float(rows[-1]["test_spd"]) > 0.1  # measured 0.53: group 0's higher base rate leaks into predictions


def _mutual_information_bits(joint: np.ndarray) -> float:
    """I(A;B) of a 2-D joint distribution, written out for this test."""
    joint = joint / joint.sum()
    outer = joint.sum(1, keepdims=True) * joint.sum(0, keepdims=True)
    cells = joint > 0
    return float((joint[cells] * np.log2(joint[cells] / outer[cells])).sum())


def test_runs_audit_global_and_local_disparity_every_round(run_quietly):
    import torch

    from fedsim.build import saved_model
    from fedsim.config import resolve_auto_values
    from fedsim.data.client_data import client_data
    from fedsim.data.federation import federation_for
    from tests.conftest import read_metrics

    summary, run_dir = run_quietly("dataset=fair_synthetic", "dataset.num_samples=2000", "partition=dirichlet",
                                   "partition.partition_by=sensitive", "partition.alpha=0.3", "num_clients=4",
                                   "num_rounds=2", "model=logreg")
    rows = read_metrics(run_dir)
    names = ("global", "local", "unique", "redundant", "masked", "z_s", "yhat_s")
    assert all(row[f"disparity_{name}"] == "" for name in names for row in rows[:1])  # round 0: no client evaluated
    for row in rows[1:]:
        terms = {name: float(row[f"disparity_{name}"]) for name in names}
        assert min(terms.values()) >= -1e-6
        assert terms["global"] == pytest.approx(terms["unique"] + terms["redundant"], abs=1e-5)
        assert terms["local"] == pytest.approx(terms["unique"] + terms["masked"], abs=1e-5)

    # the summary's audit is the final model's predictions on every client's validation rows, pooled as P(S, Z, Ŷ)
    experiment = resolve_auto_values(compose_experiment(["dataset=fair_synthetic", "dataset.num_samples=2000",
                                                         "partition=dirichlet", "partition.partition_by=sensitive",
                                                         "partition.alpha=0.3", "num_clients=4", "model=logreg"]))
    federation = federation_for(experiment)
    model = saved_model(run_dir / "model.pt", experiment)
    joint = np.zeros((4, 2, 2))
    with torch.no_grad():
        for pid in range(4):
            _, val = client_data(federation, experiment, pid)
            predicted = model(val.x).argmax(1).numpy()
            np.add.at(joint[pid], (val.sensitive.numpy(), predicted), 1)
    audit = summary["fairness"]["disparity"]
    assert audit["global"] == pytest.approx(_mutual_information_bits(joint.sum(0)), abs=1e-6)
    local = sum(joint[k].sum() / joint.sum() * _mutual_information_bits(joint[k]) for k in range(4))
    assert audit["local"] == pytest.approx(local, abs=1e-6)
    assert audit["z_s"] == pytest.approx(_mutual_information_bits(joint.sum(2).T), abs=1e-6)
    correct = sum(float(summary["fairness"]["clients"][str(k)]["accuracy"]) * joint[k].sum() for k in range(4))
    assert audit["accuracy"] == pytest.approx(correct / joint.sum())
    assert audit["z_s"] > 0.05  # the partition by A gives clients different group mixes


def test_other_data_has_no_fairness_columns(run_quietly):
    summary, run_dir = run_quietly("num_clients=3", "num_rounds=1", "partition=iid")
    from tests.conftest import read_metrics

    assert "test_spd" not in read_metrics(run_dir)[0] and "fairness" not in summary
    assert not any(column.startswith("disparity_") for column in read_metrics(run_dir)[0])


def test_reweighing_weights_match_kamiran_calders_by_hand():
    from fedsim.fairness import reweighing_weights

    y = torch.tensor([1, 1, 1, 0, 1, 0, 0, 0])
    a = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    # P(A=a) = P(Y=y) = 1/2; P(0,1) = P(1,0) = 3/8 -> (1/4)/(3/8) = 2/3; P(0,0) = P(1,1) = 1/8 -> 2.
    expected = torch.tensor([2 / 3, 2 / 3, 2 / 3, 2, 2, 2 / 3, 2 / 3, 2 / 3])
    weights = reweighing_weights(y, a)
    assert torch.allclose(weights, expected) and float(weights.mean()) == pytest.approx(1.0)
    # In the weighted data the positive rate is the same in both groups: Y is independent of A.
    rate = [float((weights * y)[a == g].sum() / weights[a == g].sum()) for g in (0, 1)]
    assert rate[0] == pytest.approx(rate[1])
    assert torch.equal(reweighing_weights(y, torch.zeros(8, dtype=torch.long)), torch.ones(8))  # one group: no change


def test_reweighing_changes_local_training_only_when_asked():
    from fedsim.data import ArrayDataset
    from fedsim.training import TrainSettings, train_local

    torch.manual_seed(0)
    data = ArrayDataset(torch.randn(64, 3), torch.randint(0, 2, (64,)), torch.randint(0, 2, (64,)))
    settings = TrainSettings(epochs=2, batch_size=16, lr=0.5)

    def trained(weights):
        model = torch.nn.Linear(3, 2)
        torch.nn.init.zeros_(model.weight), torch.nn.init.zeros_(model.bias)
        train_local(model, data, settings, torch.Generator().manual_seed(1), torch.device("cpu"), weights)
        return model.weight.detach().clone()

    plain = trained(None)
    assert torch.allclose(trained(torch.ones(64)), plain, atol=1e-6)
    assert not torch.allclose(trained(torch.linspace(0.1, 2.0, 64)), plain, atol=1e-3)


@pytest.mark.parametrize("overrides, value", [(["client.local_debiasing=fairbatch"], "fairbatch"),
                                              (["dataset=digits", "client.local_debiasing=reweighing"], "digits")])
def test_local_debiasing_is_validated(overrides, value):
    from fedsim.config import compose_experiment, validate
    from fedsim.errors import ConfigError

    with pytest.raises(ConfigError, match=value):
        validate(compose_experiment(overrides))


def test_local_reweighing_lowers_the_global_models_parity_gap(run_quietly):
    base = ["dataset=fair_synthetic", "dataset.num_samples=3000", "partition=iid", "num_clients=3", "model=logreg",
            "num_rounds=3", "strategy=fedavg"]
    plain = run_quietly(*base, name="plain")[0]["fairness"]
    debiased = run_quietly(*base, "client.local_debiasing=reweighing", name="reweighed")[0]["fairness"]
    # The data's base rates differ by 0.6 between groups; reweighing makes Y independent of A in what clients fit.
    assert abs(debiased["test_spd"]) < abs(plain["test_spd"]) - 0.05
    assert abs(debiased["test_eod"]) < abs(plain["test_eod"])
