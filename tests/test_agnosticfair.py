"""AgnosticFair (`fedsim.strategies.agnosticfair`): the kernel sums and the α LP against hand computations, the
client's reweighted and penalised loss, the new training seam (a batch term), and whole federated runs with
full-batch local steps against the centralised algorithm on the pooled rows."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord

from fedsim.config import resolve_auto_values
from fedsim.data.federation import federation_for
from fedsim.data.tensors import ArrayDataset
from fedsim.strategies.agnosticfair import (
    ALPHA_KEY,
    FAIRNESS_KEY,
    FORM_KEY,
    NON_FINITE,
    PENALTY_KEY,
    RATIO_KEY,
    SIGMA_KEY,
    TOTAL_KEY,
    AgnosticFair,
    PartySums,
    centralised_agnosticfair,
    client_sums,
    gaussian_kernel,
    party_sums,
    reference_points,
    reweighted_training,
    solve_alpha,
)
from fedsim.training import TrainSettings, train_local

from .conftest import read_metrics

E = math.e


def _sums(kernel, kernel_loss, kernel_sd=(0, 0, 0), kernel_s=(0, 0, 0), sum_d=0.0, count=4) -> PartySums:
    return PartySums(*(np.asarray(v, dtype=np.float64) for v in (kernel, kernel_loss, kernel_sd, kernel_s)),
                     sum_d=sum_d, sum_loss=0.0, sum_s=0.0, sum_sd=0.0, count=count)


# --- kernel sums ---------------------------------------------------------------------------------------------------

def test_kernel_sums_by_hand():
    """x = (0,0), (1,0); r = (0,0), (0,2); σ = 2: ‖x − r‖² = [[0, 4], [1, 5]], K = exp(−‖x − r‖²/4)."""
    x, reference = torch.tensor([[0.0, 0.0], [1.0, 0.0]]), torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    k = np.array([[1.0, E ** -1], [E ** -0.25, E ** -1.25]])
    np.testing.assert_allclose(gaussian_kernel(x, reference, 2.0).numpy(), k, rtol=1e-12)
    s, d, loss = torch.tensor([1, 0]), torch.tensor([0.5, -2.0], dtype=torch.float64), torch.tensor(
        [0.3, 0.7], dtype=torch.float64)
    sums = party_sums(x, s, d, loss, reference, 2.0)
    np.testing.assert_allclose(sums.kernel, [1 + E ** -0.25, E ** -1 + E ** -1.25], rtol=1e-12)
    np.testing.assert_allclose(sums.kernel_loss, [0.3 + 0.7 * E ** -0.25, 0.3 * E ** -1 + 0.7 * E ** -1.25],
                               rtol=1e-12)
    np.testing.assert_allclose(sums.kernel_sd, [0.5, 0.5 * E ** -1], rtol=1e-12)
    np.testing.assert_allclose(sums.kernel_s, [1.0, E ** -1], rtol=1e-12)
    assert (sums.sum_d, sums.sum_s, sums.sum_sd, sums.count) == (-1.5, 1.0, 0.5, 2)
    assert sums.sum_loss == pytest.approx(1.0)


@dataclass
class FakeClient:
    """What the ClientApp offers AgnosticFair's client halves (a `StageRound` and a `LocalRound`)."""

    x: torch.Tensor
    y: torch.Tensor
    s: torch.Tensor | None
    config: ConfigRecord
    received: object = None
    model: torch.nn.Module | None = None
    num_classes: int = 2
    device: torch.device = torch.device("cpu")
    partition_id: int = 0

    def rows(self, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        return self.x, self.y

    def sensitive(self, split: str = "train") -> torch.Tensor | None:
        return self.s

    def model_from(self, arrays: object) -> torch.nn.Module:
        assert self.model is not None
        return self.model


def _reference_config(reference: torch.Tensor, **keys: object) -> ConfigRecord:
    return ConfigRecord({"agnosticfair-reference": reference.numpy().astype("<f4").tobytes(),
                         "agnosticfair-features": int(reference.shape[1]), SIGMA_KEY: 2.0, **keys})


def test_the_client_sends_the_sums_of_its_boundary_distances_and_losses():
    """A two-output linear model: d = (w1 − w0)·x + (b1 − b0), ℓ the cross-entropy, i.e. the logistic loss of d."""
    generator = torch.Generator().manual_seed(1)
    x, y, s = torch.randn(7, 3, generator=generator), torch.tensor([0, 1, 1, 0, 1, 0, 0]), torch.tensor(
        [1, 0, 1, 1, 0, 0, 1])
    torch.manual_seed(0)  # the model's initial weights: one fixed case, not a new one per run
    model = torch.nn.Linear(3, 2)
    reference = torch.randn(4, 3, generator=generator)
    reply = client_sums(FakeClient(x, y, s, _reference_config(reference), model=model))
    with torch.no_grad():
        d = (x @ (model.weight[1] - model.weight[0]) + model.bias[1] - model.bias[0]).double()
    loss = torch.nn.functional.softplus(-(2 * y - 1) * d)  # the logistic loss of d
    expected = party_sums(x, s, d, loss, reference, 2.0)
    for name in ("kernel", "kernel_loss", "kernel_sd", "kernel_s"):
        np.testing.assert_allclose(reply["arrays"][name].numpy(), getattr(expected, name), rtol=1e-5, atol=1e-6)
    assert reply["metrics"]["num-examples"] == 7
    assert reply["metrics"]["sum_d"] == pytest.approx(float(d.sum()), rel=1e-6)


def test_a_task_without_two_classes_or_a_sensitive_attribute_is_refused_by_the_client_half():
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="two-class task.*3 classes"):
        reweighted_training(FakeClient(x, torch.zeros(3, dtype=torch.long), torch.zeros(3), ConfigRecord(),
                                       num_classes=3))
    with pytest.raises(ValueError, match="sensitive attribute"):
        client_sums(FakeClient(x, torch.zeros(3, dtype=torch.long), None, _reference_config(x),
                               model=torch.nn.Linear(2, 2)))


# --- the α LP --------------------------------------------------------------------------------------------------

def _two_parties() -> list[PartySums]:
    """n = 4 over two parties of 2 rows: Σ K = (1, 1, 1) (so Σ α = 4), p = (3, 1, 2), B = 3.
    Global f = (2, 0, 0) − (0, 0, 1)·2/4 = (2, 0, −0.5); party A's f = (2, 0, 0), party B's (0, 0, −1)."""
    a = _sums([0.5] * 3, [1.5, 0.5, 1.0], kernel_sd=[2, 0, 0], count=2)
    b = _sums([0.5] * 3, [1.5, 0.5, 1.0], kernel_s=[0, 0, 1], sum_d=2.0, count=2)
    return [a, b]


def test_the_lp_without_fairness_fills_the_lossiest_points_first():
    step = solve_alpha(_two_parties(), bound=3.0, tau=1.0, fairness="none")
    np.testing.assert_allclose(step.alpha, [3, 0, 1], atol=1e-9)  # value 3·3 + 2·1 = 11
    assert step.status == 0


def test_the_global_fairness_row_by_hand():
    """max 3α1 + α2 + 2α3, Σα = 4, |2α1 − 0.5α3| ≤ 1: both binding, α = (1.2, 0, 2.8), value 9.2."""
    step = solve_alpha(_two_parties(), bound=3.0, tau=1.0, fairness="global")
    np.testing.assert_allclose(step.alpha, [1.2, 0.0, 2.8], atol=1e-9)
    assert float(step.alpha @ [3, 1, 2]) == pytest.approx(9.2)


def test_the_local_fairness_rows_by_hand():
    """Per party: |2α1| ≤ 1 and |−α3| ≤ 1, so α = (0.5, 2.5, 1), value 6."""
    step = solve_alpha(_two_parties(), bound=3.0, tau=1.0, fairness="local")
    np.testing.assert_allclose(step.alpha, [0.5, 2.5, 1.0], atol=1e-9)


def test_an_unreachable_mean_weight_has_no_alpha():
    far = [_sums([0.1] * 3, [1.0] * 3)]  # at most B·0.3 = 0.9 < n = 4
    step = solve_alpha(far, bound=3.0, tau=1.0, fairness="global")
    assert step.alpha is None and step.status == 2


def test_a_diverged_model_gives_no_lp():
    diverged = [_sums([1.0] * 3, [float("nan"), 1.0, 1.0])]
    step = solve_alpha(diverged, bound=3.0, tau=1.0, fairness="global")
    assert step.alpha is None and step.status == NON_FINITE and "diverged" in step.message


# --- the θ step on a client ------------------------------------------------------------------------------------

def test_the_client_weights_and_penalty_global_and_local():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    s, y = torch.tensor([1, 0, 1]), torch.tensor([1, 0, 0])
    reference = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    alpha = [2.0, 0.5]
    k = gaussian_kernel(x, reference, 2.0).numpy()
    w = k @ np.array(alpha)
    rows = torch.tensor([0, 2])  # a minibatch of rows 0 and 2, d = (1, −1)
    logits = torch.tensor([[0.0, 1.0], [2.0, 1.0]])
    d = {0: 1.0, 2: -1.0}
    common = {ALPHA_KEY: alpha, PENALTY_KEY: 2.0, TOTAL_KEY: 12, FORM_KEY: "per_sample"}
    glob = reweighted_training(FakeClient(x, y, s, _reference_config(reference, **common, **{
        FAIRNESS_KEY: "global", RATIO_KEY: 0.4})))
    np.testing.assert_allclose(glob.sample_weights.numpy(), w, rtol=1e-6)
    term = glob.batch_terms[0](logits, rows)
    by_hand = 2.0 * np.mean([((w[i] * s[i].item() - 0.4) * d[i]) ** 2 for i in (0, 2)])
    assert float(term) == pytest.approx(by_hand, rel=1e-6)
    local = reweighted_training(FakeClient(x, y, s, _reference_config(reference, **common, **{
        FAIRNESS_KEY: "local", RATIO_KEY: 0.4})))
    ratio = (w[0] + w[2]) / 3  # the client's own s̄_w,k
    by_hand = 2.0 * 12 / 3 * np.mean([((w[i] * s[i].item() - ratio) * d[i]) ** 2 for i in (0, 2)])
    assert float(local.batch_terms[0](logits, rows)) == pytest.approx(by_hand, rel=1e-6)
    covariance = reweighted_training(FakeClient(x, y, s, _reference_config(reference, **{
        **common, FAIRNESS_KEY: "global", RATIO_KEY: 0.4, FORM_KEY: "covariance"})))
    by_hand = 2.0 * np.mean([(w[i] * s[i].item() - 0.4) * d[i] for i in (0, 2)]) ** 2  # the square of the mean
    assert float(covariance.batch_terms[0](logits, rows)) == pytest.approx(by_hand, rel=1e-6)
    unit = reweighted_training(FakeClient(x, y, s, ConfigRecord({PENALTY_KEY: 0.0, FAIRNESS_KEY: "global",
                                                                 RATIO_KEY: 0.5})))
    assert torch.equal(unit.sample_weights, torch.ones(3)) and unit.batch_terms == ()


def test_a_batch_term_enters_the_local_objective_with_its_minibatch_rows():
    """One full-batch SGD step of train_local with weights and a batch term is the step on the written-out loss."""
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 3, generator=generator), torch.tensor([0, 1, 1, 0, 1, 0])
    weights = torch.rand(6, generator=generator)
    seen = []

    def term(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        seen.append(sorted(rows.tolist()))
        return 0.5 * (weights[rows] * logits[:, 1]).square().mean()

    model, manual = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    manual.load_state_dict(model.state_dict())
    train_local(model, ArrayDataset(x, y), TrainSettings(epochs=1, batch_size=6, lr=0.3), torch.Generator(),
                torch.device("cpu"), weights, (), (term,))
    logits = manual(x)
    loss = (weights * torch.nn.functional.cross_entropy(logits, y, reduction="none")).mean() + 0.5 * (
        weights * logits[:, 1]).square().mean()
    loss.backward()
    with torch.no_grad():
        for p in manual.parameters():
            p -= 0.3 * p.grad
    assert seen == [list(range(6))]
    for a, b in zip(model.parameters(), manual.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


# --- whole runs against the centralised algorithm ---------------------------------------------------------------

FULL_BATCH = ("strategy=agnosticfair", "dataset=fair_synthetic", "dataset.num_samples=500", "model=logreg",
              "num_clients=3", "partition=dirichlet", "partition.partition_by=sensitive", "partition.alpha=0.5",
              "client.batch_size=100000", "client.local_epochs=1", "client.lr=0.05", "fraction_train=1.0",
              "server.proxy_size=40", "num_rounds=7", "strategy.alpha_every=2", "device=cpu")


@pytest.mark.parametrize("fairness, tau, engine, form", [("global", 20.0, "inprocess", "per_sample"),
                                                         ("local", 10.0, "vectorized", "per_sample"),
                                                         ("local", 10.0, "inprocess", "covariance")])
def test_full_batch_rounds_are_the_centralised_algorithm(run_quietly, fairness, tau, engine, form):
    """The reference's per-row penalty, and the covariance penalty per client (local variant: the centralised
    objective is a sum over parties); the global covariance penalty is the square of a sum over clients, which no
    average of the clients' objectives gives."""
    overrides = (*FULL_BATCH, f"strategy.fairness={fairness}", f"strategy.tau={tau}", f"engine={engine}",
                 f"strategy.penalty_form={form}")
    _, run_dir = run_quietly(*overrides)
    federated = torch.load(run_dir / "model.pt", weights_only=True)

    from fedsim.build import build_model
    from fedsim.config import compose_experiment

    experiment = resolve_auto_values(compose_experiment(list(overrides)))
    federation = federation_for(experiment)
    splits = [federation.client_split(k)[0] for k in range(federation.num_clients)]  # training rows only
    x, y, s = (torch.cat([getattr(split, name) for split in splits]) for name in ("x", "y", "sensitive"))
    parties = np.repeat(np.arange(len(splits)), [len(split) for split in splits])
    reference = reference_points(federation.proxy.x, None, 0)

    def centralised(alpha_every: int) -> tuple[torch.nn.Module, list]:
        torch.manual_seed(0)
        model = build_model(experiment, federation.data)
        steps = centralised_agnosticfair(model, x, y, s, parties, reference, rounds=7, lr=0.05, tau=tau,
                                         fairness=fairness, alpha_every=alpha_every, penalty_form=form)
        return model, steps

    model, steps = centralised(2)
    assert [step.status for step in steps] == [0, 0, 0]  # α steps before steps 3, 5 and 7, all solved
    for name, value in model.state_dict().items():
        torch.testing.assert_close(federated[name], value, rtol=1e-4, atol=1e-5)
    unweighted, _ = centralised(100)  # no α step: the reweighting must have changed the model
    assert max(float((a - b).abs().max()) for a, b in zip(model.state_dict().values(),
                                                          unweighted.state_dict().values(), strict=True)) > 1e-3
    rows = read_metrics(run_dir)
    solved = [row for row in rows if row.get("alpha_lp_status") == "0.0"]
    assert len(solved) == 3 and all(float(row["alpha_fairness_row"]) <= tau * (1 + 1e-6) for row in solved)


def test_reference_points_are_the_proxy_rows_or_a_seeded_subset():
    proxy = torch.arange(24, dtype=torch.float32).reshape(6, 2, 2)
    assert torch.equal(reference_points(proxy, None, 0), proxy.reshape(6, 4))
    subset = reference_points(proxy, 3, 5)
    assert subset.shape == (3, 4) and torch.equal(subset, reference_points(proxy, 3, 5))
    assert AgnosticFair.requires_binary_labels and AgnosticFair.requires_sensitive_attribute


def test_a_task_of_more_than_two_classes_is_refused_before_training():
    from fedsim.config import compose_experiment
    from fedsim.errors import ConfigError
    from fedsim.run import _check_binary_labels

    experiment = compose_experiment(["strategy=agnosticfair", "dataset=fair_synthetic"])
    _check_binary_labels(experiment, 2)
    with pytest.raises(ConfigError, match="AgnosticFair needs a two-class task; this data set has 10 classes"):
        _check_binary_labels(experiment, 10)
    _check_binary_labels(compose_experiment(["strategy=fedavg"]), 10)  # no other strategy asks for two classes
