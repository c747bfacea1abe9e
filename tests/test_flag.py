"""Flag Aggregator: the p x p computation against an SVD of the explicit column matrix, the accept test, identical
updates, rank deficiency and zero updates, the random starts, more IRLS steps, random Byzantine updates, and the
strategy (update scaling, integer arrays, report, private random state)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from fedsim.strategies import FlagAggregator
from fedsim.strategies import flag as flag_module
from fedsim.strategies.flag import SINE_EPS, flag_aggregate, flag_fit

from .conftest import EVERY_NODE_TRAINS, train_reply

pytestmark = pytest.mark.usefixtures("task_identity")


def _normalised(updates: np.ndarray) -> np.ndarray:
    return updates / np.linalg.norm(updates, axis=1, keepdims=True)


def _by_hand(updates: np.ndarray, start: np.ndarray, r: int, lambda_: float):
    """One released IRLS step, building the n x (p + p(p-1)) column matrix and taking numpy's SVD."""
    g = _normalised(updates)
    p = len(g)

    def sine_weight(vector):
        return (abs(1 - np.sum((start.T @ vector) ** 2)) + SINE_EPS) ** -0.25

    columns = [sine_weight(gk) * gk for gk in g]
    if lambda_ > 0:
        columns += [sine_weight(g[i] - g[j]) * lambda_ / (p * (p - 1)) * (g[i] - g[j])
                    for i in range(p) for j in range(p) if i != j]
    subspace = np.linalg.svd(np.stack(columns, axis=1), full_matrices=False)[0][:, :r]

    def objective(y):
        return sum(np.sqrt(max(0.0, 1 - np.sum((y.T @ gk) ** 2))) for gk in g)

    kept = subspace if objective(subspace) < objective(start) else start
    aggregate = sum(kept @ (kept.T @ gk) for gk in g) / r
    return kept, aggregate, np.array([np.sum((kept.T @ gk) ** 2) for gk in g]), objective(kept)


@pytest.mark.parametrize("lambda_", [0.0, 40.0])
@pytest.mark.parametrize("r", [1, 2, 4])
def test_one_step_equals_the_svd_of_the_column_matrix(r, lambda_):
    rng = np.random.default_rng(10 * r + int(lambda_))
    updates = rng.standard_normal((6, 15)) + np.linspace(0, 1, 15)
    start = np.linalg.qr(rng.random((15, r)) - 0.5)[0]
    fit = flag_fit(updates, r, lambda_, 1, start=start)
    kept, aggregate, ratios, objective = _by_hand(updates, start, r, lambda_)
    assert fit.accepted and fit.basis is not None and fit.basis.shape == (6, r)
    y = _normalised(updates).T @ fit.basis
    np.testing.assert_allclose(y.T @ y, np.eye(r), atol=1e-10)
    np.testing.assert_allclose(y @ y.T, kept @ kept.T, atol=1e-8)
    np.testing.assert_allclose(fit.g_star, aggregate, atol=1e-8)
    np.testing.assert_allclose(fit.ratios, ratios, atol=1e-8)
    assert fit.objective == pytest.approx(objective, abs=1e-8)


def test_the_pairwise_columns_change_the_subspace():
    rng = np.random.default_rng(0)
    updates, start = rng.standard_normal((5, 12)), np.linalg.qr(rng.random((12, 2)) - 0.5)[0]
    without, with_pairs = flag_fit(updates, 2, 0.0, start=start), flag_fit(updates, 2, 40.0, start=start)
    assert np.abs(without.g_star - with_pairs.g_star).max() > 1e-3


def test_a_step_that_does_not_lower_the_objective_keeps_the_start():
    """e1 and e2 with Y0 = e1: a = (1e-7^(-1/4), 1), so the step gives e1 again, objective 1 both times."""
    updates = np.array([[2.0, 0.0], [0.0, 3.0]])
    fit = flag_fit(updates, 1, start=np.array([[1.0], [0.0]]))
    assert not fit.accepted and fit.basis is None and fit.objective == pytest.approx(1.0)
    np.testing.assert_allclose(fit.g_star, [1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(fit.ratios, [1.0, 0.0], atol=1e-12)


@pytest.mark.parametrize("start", ["released", "projected"])
def test_identical_updates_give_p_over_r_times_the_unit_update(start):
    update = np.random.default_rng(1).standard_normal(40)
    for r in (1, 2, 3, 5, 9):
        g_star, ratios, objective, accepted = flag_aggregate(np.tile(update, (5, 1)), r, 0.0, 1, r, start=start)
        np.testing.assert_allclose(g_star, 5 / min(r, 5) * update / np.linalg.norm(update), atol=1e-10)
        np.testing.assert_allclose(ratios, 1.0, atol=1e-10)
        assert accepted and objective == pytest.approx(0.0, abs=1e-6)


def test_rank_deficiency_uses_the_directions_there_are():
    """Four updates in a plane, r = 3: Y is that plane, so g* = (1/3) sum_k g_k-hat and every ratio is 1."""
    rng = np.random.default_rng(2)
    plane = np.linalg.qr(rng.standard_normal((20, 2)))[0].T
    updates = rng.standard_normal((4, 2)) @ plane
    fit = flag_fit(updates, 3, 0.0, 1, 0)
    assert fit.basis is not None and fit.basis.shape == (4, 2)
    np.testing.assert_allclose(fit.g_star, _normalised(updates).sum(axis=0) / 3, atol=1e-10)
    np.testing.assert_allclose(fit.ratios, 1.0, atol=1e-10)


def test_a_zero_update_is_left_out_without_nan():
    rng = np.random.default_rng(4)
    updates = rng.standard_normal((4, 10))
    start = np.linalg.qr(rng.random((10, 2)) - 0.5)[0]
    with_zero = flag_fit(np.vstack([updates, np.zeros(10)]), 2, 0.0, start=start)
    without = flag_fit(updates, 2, 0.0, start=start)
    assert np.isfinite(with_zero.g_star).all() and with_zero.ratios[-1] == 0.0
    np.testing.assert_allclose(with_zero.g_star, without.g_star, atol=1e-12)
    assert with_zero.objective == pytest.approx(without.objective + 1.0)
    everything_zero = flag_fit(np.zeros((3, 10)), 2, 1.0, 1, 0)
    assert not everything_zero.accepted and not everything_zero.g_star.any() and everything_zero.objective == 3.0


def test_the_released_start_is_the_qr_of_its_uniform_draws_generated_in_chunks(monkeypatch):
    monkeypatch.setattr(flag_module, "CHUNK_ELEMENTS", 7)  # chunks of 3 rows
    rng = np.random.default_rng(5)
    updates = rng.standard_normal((3, 16))
    inverse = 1 / np.linalg.norm(updates, axis=1)
    span = flag_module._Span(_normalised(updates) @ _normalised(updates).T, 1e-12)
    start = flag_module._start("released", span, inverse, updates, 2, np.random.default_rng(11))
    draws = np.random.default_rng(11).random((16, 2)) - 0.5
    q = np.linalg.qr(draws)[0]
    frame = np.stack([start.apply(column) for column in np.eye(2)], axis=1)  # Y0 up to column signs
    np.testing.assert_allclose(frame @ frame.T, q @ q.T, atol=1e-12)
    b0 = _normalised(updates) @ q
    np.testing.assert_allclose(start.projections @ start.projections.T, b0 @ b0.T, atol=1e-12)


@pytest.mark.parametrize("kind", ["released", "projected"])
def test_both_starts_are_orthonormal_frames_spread_uniformly(kind):
    """Y0 u has the norm of u and G-hat^T Y0 u = B0 u; over draws, E[B0 B0^T] = (r/n) G-hat^T G-hat (Haar)."""
    rng = np.random.default_rng(6)
    p, n, r = 3, 20, 2
    updates = rng.standard_normal((p, n))
    g = _normalised(updates)
    total = np.zeros((p, p))
    for seed in range(300):
        start = flag_module._start(kind, flag_module._Span(g @ g.T, 1e-12), 1 / np.linalg.norm(updates, axis=1),
                                   updates, r, np.random.default_rng(seed))
        assert type(start).__name__.lower().startswith("_" + kind)
        b0 = start.projections
        total += b0 @ b0.T
        u = rng.standard_normal(r)
        assert np.linalg.norm(start.apply(u)) == pytest.approx(np.linalg.norm(u), rel=1e-10)
        np.testing.assert_allclose(g @ start.apply(u), b0 @ u, atol=1e-10)
    np.testing.assert_allclose(total / 300, r / n * (g @ g.T), atol=0.025)


def test_more_irls_steps_never_raise_the_objective():
    rng = np.random.default_rng(7)
    several = 0
    for seed in range(5):
        updates = rng.standard_normal((8, 30)) + 2 * rng.standard_normal(30)
        one = flag_fit(updates, 3, 0.0, 1, seed)
        more = flag_fit(updates, 3, 0.0, 10, seed, tolerance=1e-9)
        assert more.objective <= one.objective + 1e-12 and 1 <= more.steps <= 10
        several += more.steps > 1
    assert several > 0


def test_random_byzantine_updates_get_lower_reconstruction_ratios():
    """7 honest noisy copies of one direction and 2 uniform [0, 1) vectors (the released "random" attack), r = 1
    (the released default). With r >= 2 the two attackers, nearly collinear, get a direction of their own."""
    rng = np.random.default_rng(0)
    direction = rng.standard_normal(100)
    honest = direction / np.linalg.norm(direction) + 0.03 * rng.standard_normal((7, 100))
    updates = np.vstack([honest, rng.random((2, 100))])
    for iterations in (1, 5):
        ratios = flag_fit(updates, 1, 0.0, iterations, 0).ratios
        assert ratios[7:].max() < 0.1 < 0.8 < ratios[:7].min()


def test_float32_updates_agree_with_float64():
    """The same start (the projected one draws in float64 whatever the updates' type), float32 arithmetic."""
    updates = np.random.default_rng(8).standard_normal((6, 500))
    double = flag_fit(updates, 3, 2.0, 2, 1, start="projected")
    single = flag_fit(updates.astype(np.float32), 3, 2.0, 2, 1, start="projected")
    np.testing.assert_allclose(single.g_star, double.g_star, atol=1e-4)
    np.testing.assert_allclose(single.ratios, double.ratios, atol=1e-4)


# --- the strategy ---------------------------------------------------------------------------------------------

def _record(weight, batches) -> dict[str, np.ndarray]:
    return {"w": np.asarray(weight, dtype=np.float32).reshape(2, 3), "bn.num_batches_tracked": np.array(batches)}


def _strategy(**options) -> FlagAggregator:
    from flwr.app import Array, ArrayRecord

    strategy = FlagAggregator(**EVERY_NODE_TRAINS, seed=3, **{"update_scale": "released", **options})
    base = _record(np.arange(6), 10)
    strategy.current_arrays = ArrayRecord({name: Array(value) for name, value in base.items()})  # as configured
    return strategy


def test_the_strategy_steps_the_global_model_and_reports():
    rng = np.random.default_rng(9)
    deltas = rng.standard_normal((5, 6)).astype(np.float32)
    replies = [train_reply(node, _record(np.arange(6) + delta, 10 + node), node)
               for node, delta in enumerate(deltas, start=1)]
    strategy = _strategy(server_lr=0.5, irls_iters=3)
    arrays, metrics = strategy.aggregate_train(4, replies)
    updates = np.stack([replies[k].content["arrays"]["w"].numpy().ravel() - np.arange(6, dtype=np.float32)
                        for k in range(5)])  # float32, as the model
    fit = flag_fit(updates, 2, 0.0, 3, np.random.default_rng([3, 4, flag_module.STREAM]))  # auto: r = 5 // 2
    expected = (np.arange(6) + 0.5 * fit.g_star).astype(np.float32).reshape(2, 3)
    np.testing.assert_array_equal(arrays["w"].numpy(), expected)
    # integer arrays as FedAvg: sum_k n_k (10 + k) / sum_k n_k with n_k = k
    assert arrays["bn.num_batches_tracked"].numpy() == np.rint(sum(k * (10 + k) for k in range(1, 6)) / 15)
    assert strategy.client_weights == pytest.approx(dict(zip(range(1, 6), fit.ratios, strict=True)))
    assert strategy.round_scalars == {"flag_objective": pytest.approx(fit.objective), "flag_accepted": 1.0}
    assert metrics is not None and "train_loss" in metrics


def test_median_norm_scaling_gives_identical_updates_back():
    delta = np.array([0.5, -1.0, 2.0, 0.0, 0.25, 1.0])
    replies = [train_reply(node, _record(np.arange(6) + delta, 10), 1) for node in range(1, 6)]
    for subspace_dim in (1, 2, "auto", 5):
        arrays, _ = _strategy(update_scale="median_norm", subspace_dim=subspace_dim).aggregate_train(1, replies)
        np.testing.assert_allclose(arrays["w"].numpy().ravel(), np.arange(6) + delta, atol=1e-6)
    released, _ = _strategy(subspace_dim=2).aggregate_train(1, replies)  # (p / r) delta-hat
    np.testing.assert_allclose(released["w"].numpy().ravel(), np.arange(6) + 2.5 * delta / np.linalg.norm(delta),
                               atol=1e-6)


def test_the_random_start_is_private_and_seeded_by_seed_and_round():
    rng = np.random.default_rng(12)
    replies = [train_reply(node, _record(rng.standard_normal(6), 10), 1) for node in range(1, 5)]
    before = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state().clone())
    first, _ = _strategy(start="released").aggregate_train(1, replies)
    again, _ = _strategy(start="released").aggregate_train(1, replies)
    after = (random.getstate(), np.random.get_state()[1], torch.get_rng_state())
    assert before[0] == after[0] and np.array_equal(before[1], after[1]) and torch.equal(before[2], after[2])
    np.testing.assert_array_equal(first["w"].numpy(), again["w"].numpy())
    objectives = set()
    for server_round in (1, 2, 3):
        strategy = _strategy(irls_iters=1)
        strategy.aggregate_train(server_round, replies)
        objectives.add(round(strategy.round_scalars["flag_objective"], 12))
    assert len(objectives) == 3  # each round its own start, hence its own one-step subspace


def test_subspace_size():
    assert [_strategy().subspace_size(p) for p in (1, 2, 5, 9)] == [1, 1, 2, 4]
    assert [_strategy(subspace_dim=3).subspace_size(p) for p in (1, 2, 5)] == [1, 2, 3]
    with pytest.raises(ValueError):
        FlagAggregator(subspace_dim=0)
