"""Fair-yet-Equal: the round's Shapley values against hand computations (exact for two nodes, unbiased for three),
the Hotelling test against its hand-computed statistic and pingouin, the selection probabilities, stage 2's draws,
unnormalised step and kept models, a resume across the stage switch, and a digits run with noisy clients."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.clientapp import ClientApp

from fedsim.engines import InProcessGrid
from fedsim.strategies import FairYetEqual
from fedsim.strategies.fairequal import (
    coalition_cosine,
    hotelling_pvalue,
    selection_probabilities,
    stratified_shapley,
    update_gram,
)

from .conftest import EVERY_NODE_TRAINS, read_metrics, stop_after_checkpoint, train_reply

pytestmark = pytest.mark.usefixtures("task_identity")


def _grid(num_nodes: int) -> InProcessGrid:
    return InProcessGrid(ClientApp(), num_nodes)


def _model(weight, running_mean=0.0, batches=0) -> dict[str, np.ndarray]:
    return {"layer.weight": np.array(weight, dtype=np.float32), "bn.running_mean": np.array([running_mean], np.float32),
            "bn.num_batches_tracked": np.array(batches, dtype=np.int64)}


def _records(*models: dict[str, np.ndarray]) -> list[ArrayRecord]:
    return [ArrayRecord({k: Array(np.asarray(v)) for k, v in m.items()}) for m in models]


def _round(strategy: FairYetEqual, grid: InProcessGrid, server_round: int, start: dict, updates: dict[int, dict],
           sizes: dict[int, int]):
    """configure_train from `start`, then replies start + update from the nodes sent the model (those in `updates`)."""
    arrays = _records(start)[0]
    messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))
    sent = [m.metadata.dst_node_id for m in messages]
    replies = [train_reply(node, _records({k: start[k] + updates[node].get(k, 0 * start[k]) for k in start})[0],
                           sizes[node]) for node in sent if node in updates]
    aggregated, _ = strategy.aggregate_train(server_round, replies)
    return sent, aggregated


# --- stage 1: the value of a round -----------------------------------------------------------------------------------

def test_two_nodes_get_their_exact_shapley_values_by_hand():
    """n = (3, 1): w = (.75, .25); Delta_1 = (1, 0), Delta_2 = (0, 2): u_1 = (.75, 0), u_2 = (0, .5), g = (.75, .5),
    cos(g, u_1) = .75/sqrt(.8125) = .8320503, cos(g, u_2) = .5547002. With one coalition per size the sampler is
    exact: phi_1 = 1/2 cos(g, u_1) + 1/2 (1 - cos(g, u_2)) = .6386750, phi_2 = .3613250. The running-mean buffer
    (a huge change) stays out of the cosine; it and the integer counter step as x + sum w Delta."""
    grid = _grid(2)
    strategy = FairYetEqual(**EVERY_NODE_TRAINS)
    a, b = grid.get_node_ids()
    start = _model([0.0, 0.0], running_mean=1.0, batches=10)
    updates = {a: {"layer.weight": np.array([1.0, 0.0], np.float32), "bn.running_mean": np.array([100.0], np.float32),
                   "bn.num_batches_tracked": np.array(4)},
               b: {"layer.weight": np.array([0.0, 2.0], np.float32), "bn.num_batches_tracked": np.array(8)}}
    _, aggregated = _round(strategy, grid, 1, start, updates, {a: 3, b: 1})
    assert strategy.contribution[a] == pytest.approx(0.6386750, abs=1e-6)
    assert strategy.contribution[b] == pytest.approx(0.3613250, abs=1e-6)
    assert strategy.client_weights == {a: 0.75, b: 0.25}
    np.testing.assert_allclose(aggregated["layer.weight"].numpy(), [0.75, 0.5], rtol=1e-6)
    np.testing.assert_allclose(aggregated["bn.running_mean"].numpy(), [76.0], rtol=1e-6)  # 1 + .75 * 100
    assert int(aggregated["bn.num_batches_tracked"].numpy()) == 15  # 10 + .75 * 4 + .25 * 8
    assert strategy.round_scalars["stage"] == 1 and strategy.round_scalars["selected"] == 2
    assert strategy.client_scalars["contribution"] == strategy.contribution
    # each node keeps the model it was sent: ||x_server - x_sent|| = ||(.75, .5)||
    assert strategy.client_scalars["distance"][a] == pytest.approx(math.sqrt(0.8125), rel=1e-6)


def _cosine(x: np.ndarray, y: np.ndarray) -> float:
    norms = np.linalg.norm(x) * np.linalg.norm(y)
    return 0.0 if norms == 0 else float(x @ y / norms)


def _exact_shapley(u: np.ndarray) -> np.ndarray:
    """The Shapley value of U(S) = cos(g, sum_S u_j) from its definition: the mean marginal over all orders."""
    n, g = len(u), u.sum(axis=0)
    phi = np.zeros(n)
    orders = list(itertools.permutations(range(n)))
    for order in orders:
        total = np.zeros_like(g)
        for i in order:
            before = _cosine(g, total)
            total = total + u[i]
            phi[i] += (_cosine(g, total) - before) / len(orders)
    return phi


def test_three_nodes_sum_to_one_only_in_expectation():
    u = np.array([[1.0, 0.2, 0.0], [0.3, -1.0, 0.5], [0.6, 0.4, 2.0]])
    gram = u @ u.T
    for members in itertools.product([False, True], repeat=3):
        mask = np.array(members)
        assert coalition_cosine(gram, mask) == pytest.approx(_cosine(u.sum(0), u[mask].sum(0)), abs=1e-12)
    exact = _exact_shapley(u)
    assert exact.sum() == pytest.approx(1.0, abs=1e-12)  # efficiency: U(N) - U(empty) = cos(g, g) - 0
    draws = np.array([stratified_shapley(gram, np.random.default_rng(seed)) for seed in range(1000)])
    assert np.ptp(draws.sum(axis=1)) > 0.05  # one draw's values do not sum to 1 ...
    np.testing.assert_allclose(draws.mean(axis=0), exact, atol=0.01)  # ... but they estimate the Shapley value
    # the Gram matrix of the weighted updates, from models and weights
    base = _records(_model([0.0, 0.0, 0.0]))[0]
    records = _records(*[_model(row / w) for row, w in zip(u, (0.5, 0.25, 0.25), strict=True)])
    np.testing.assert_allclose(update_gram(base, records, (0.5, 0.25, 0.25)), gram, rtol=1e-6)


# --- the stopping rule ----------------------------------------------------------------------------------------------

def test_hotelling_statistic_by_hand_and_as_pingouin():
    """Rows (0,0), (2,0), (0,2), (2,2), (1,1): mean (1,1), covariance I; against (.5, 0): d = (.5, 1),
    T^2 = 5 * 1.25 = 6.25, F = 6.25 * 3 / (2 * 4) = 2.34375 on (2, 3) degrees of freedom."""
    from scipy.stats import f, ttest_1samp

    rows = np.array([[0, 0], [2, 0], [0, 2], [2, 2], [1, 1]], dtype=float)
    assert hotelling_pvalue(rows, np.array([0.5, 0.0])) == pytest.approx(f.sf(2.34375, 2, 3), rel=1e-12)
    column = np.array([[0.3], [0.1], [0.4], [0.35], [0.2], [0.25]])
    assert hotelling_pvalue(column, np.array([0.2])) == pytest.approx(ttest_1samp(column[:, 0], 0.2).pvalue,
                                                                      rel=1e-10)  # p = 1: T^2 = t^2
    pingouin = pytest.importorskip("pingouin")
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(20, 4))
    mean = rows[:5].mean(axis=0)
    assert hotelling_pvalue(rows, mean) == pytest.approx(
        float(pingouin.multivariate_ttest(rows, mean)["pval"].iloc[0]), rel=1e-10)


def test_stage_one_ends_when_the_test_passes_and_not_before_it_can_run():
    strategy = FairYetEqual(samp_num=4, samp_dim=2, alpha=0.5, **EVERY_NODE_TRAINS)
    strategy.nodes = [11, 12, 13]
    rng = np.random.default_rng(1)
    strategy.phi_rows = rng.normal(size=(4, 3)).tolist()
    assert strategy.stability_pvalue() is None  # 4 rows: not more than tau = 4
    strategy.phi_rows.append([0.0, 0.0, 0.0])
    assert len(strategy.test_nodes) == 2 and set(strategy.test_nodes) <= {11, 12, 13}
    rows = np.array(strategy.phi_rows)[:, [strategy.nodes.index(n) for n in strategy.test_nodes]]
    assert strategy.stability_pvalue() == pytest.approx(hotelling_pvalue(rows, rows[:1].mean(axis=0)))
    # the decision: stays while p <= alpha, ends the round p > alpha
    strategy.contribution = {11: 0.5, 12: 0.3, 13: 0.2}
    strategy.alpha = 1.0
    strategy._end_explore_round()
    assert strategy.stage == 1 and strategy.explored == 1 and "hotelling_pvalue" in strategy.round_scalars
    strategy.alpha = 0.0
    strategy._end_explore_round()
    assert strategy.stage == 2 and strategy.times_selected == {11: 0, 12: 0, 13: 0}
    assert list(strategy.probabilities.values()) == pytest.approx(
        selection_probabilities(np.array([0.5, 0.3, 0.2]), 150.0).tolist())
    fixed = FairYetEqual(explore_rounds=2, **EVERY_NODE_TRAINS)
    fixed.nodes, fixed.phi_rows = [1], [[1.0]]
    fixed._end_explore_round()
    assert fixed.stage == 1 and "hotelling_pvalue" not in fixed.round_scalars
    fixed._end_explore_round()
    assert fixed.stage == 2


# --- stage 2 ---------------------------------------------------------------------------------------------------------

def test_selection_probabilities_by_hand():
    psi = np.array([0.2, 0.0, 0.1])
    e = math.e
    expected = np.array([e**2, 1.0, e]) / (e**2 + e + 1)
    np.testing.assert_allclose(selection_probabilities(psi, 10.0), expected, rtol=1e-12)
    np.testing.assert_allclose(selection_probabilities(psi, 10.0, "reverse"), expected[[1, 0, 2]], rtol=1e-12)
    np.testing.assert_allclose(selection_probabilities(psi, 10.0, "random"), [1 / 3] * 3)
    peaked = selection_probabilities(np.array([1.0, 0.0, 0.5]), 1e4)
    assert peaked[1] > 0 and peaked[1] == pytest.approx(1e-30, rel=1e-6)  # the floor
    assert peaked.sum() == pytest.approx(1.0)


def test_draws_follow_the_probabilities_and_the_seed():
    strategy = FairYetEqual(ratio=0.2, seed=3, **EVERY_NODE_TRAINS)  # int(0.2 * 5) = 1 node a round
    strategy.nodes = [1, 2, 3, 4, 5]
    p = np.array([0.4, 0.3, 0.15, 0.1, 0.05])
    strategy.probabilities = dict(zip(strategy.nodes, p.tolist(), strict=True))
    drawn = [strategy.draw(r, set(strategy.nodes))[0] for r in range(1, 4001)]
    frequencies = np.bincount(drawn, minlength=6)[1:] / len(drawn)
    np.testing.assert_allclose(frequencies, p, atol=0.02)
    assert strategy.draw(7, {1, 2, 3, 4, 5}) == strategy.draw(7, {1, 2, 3, 4, 5})
    assert strategy.draw(7, {5}) == [5]  # only the available ones
    strategy.ratio = 0.1  # int(0.5) = 0: at least one
    assert len(strategy.draw(1, set(strategy.nodes))) == 1


@pytest.mark.parametrize("renormalise", [False, True])
def test_stage_two_sends_the_model_to_the_drawn_only_and_steps_without_renormalising(renormalise):
    """Five nodes of sizes 1..5 (sum 15), psi made decisive: the two drawn (int(.4 * 5)) are the two top nodes; the
    step is x + sum_S n_i/15 Delta_i (renormalise: n_i / sum_S n); the others keep round 1's model."""
    grid = _grid(5)
    nodes = list(grid.get_node_ids())
    sizes = dict(zip(nodes, range(1, 6), strict=True))
    evaluated = {**EVERY_NODE_TRAINS, "fraction_evaluate": 1.0}
    strategy = FairYetEqual(explore_rounds=1, renormalise=renormalise, **evaluated)
    start = _model([0.0])
    ones = {n: {"layer.weight": np.array([1.0], np.float32)} for n in nodes}
    sent, first = _round(strategy, grid, 1, start, ones, sizes)
    assert sorted(sent) == nodes and strategy.stage == 2
    assert float(first["layer.weight"].numpy()[0]) == pytest.approx(1.0)
    strategy.probabilities = dict(zip(nodes, selection_probabilities(np.array([0.0, 0.9, 0.0, 0.8, 0.0]), 150.0),
                                      strict=True))
    after_one = {k: v.numpy().copy() for k, v in first.items()}
    three = {n: {"layer.weight": np.array([3.0], np.float32)} for n in nodes}
    sent, second = _round(strategy, grid, 2, after_one, three, sizes)
    top = [nodes[1], nodes[3]]
    assert sent == top and strategy.round_scalars == {"stragglers": 0.0, "stage": 2.0, "selected": 2.0}
    weight = (2 + 4) / (6 if renormalise else 15)
    assert float(second["layer.weight"].numpy()[0]) == pytest.approx(1.0 + 3.0 * weight, rel=1e-6)
    assert strategy.client_weights == pytest.approx({nodes[1]: 2 / (6 if renormalise else 15),
                                                     nodes[3]: 4 / (6 if renormalise else 15)})
    assert strategy.client_scalars["selected"] == {n: float(n in top) for n in nodes}
    distance = strategy.client_scalars["distance"]
    assert distance[nodes[1]] == pytest.approx(3.0 * weight) and distance[nodes[0]] == pytest.approx(1.0 + 3 * weight)
    # each node evaluates (and ends with) the last model it received
    messages = strategy.configure_evaluate(2, second, ConfigRecord(), grid)
    held = {m.metadata.dst_node_id: float(m.content["arrays"]["layer.weight"].numpy()[0]) for m in messages}
    assert held == {n: (1.0 if n in top else 0.0) for n in nodes}
    assert float(strategy.model_for(nodes[0], second)["layer.weight"].numpy()[0]) == 0.0
    assert len(strategy.sent_models) == 2


# --- whole runs ------------------------------------------------------------------------------------------------------

def test_a_run_resumed_after_the_stage_switch_equals_the_run_left_alone(tmp_path, monkeypatch):
    """Stage 1 ends by the test (tau = 2, 2 nodes, alpha = 0: the first p-value, at 5 rows, ends it after round 5);
    stopped after round 6, in stage 2, and resumed."""
    from fedsim.config import compose_experiment
    from fedsim.run import run_experiment
    from fedsim.testing.crash import untimed_metrics

    overrides = ["strategy=fairequal", "num_clients=4", "num_rounds=7", "client.local_epochs=1", "progress=false",
                 "strategy.samp_num=2", "strategy.samp_dim=2", "strategy.alpha=0.0"]
    run_experiment(compose_experiment(overrides), tmp_path / "alone", show_progress=False)
    rows = read_metrics(tmp_path / "alone")
    assert [row["stage"] for row in rows[1:]] == ["1.0"] * 5 + ["2.0"] * 2
    assert [row["hotelling_pvalue"] != "" for row in rows[1:]] == [False] * 4 + [True] + [False] * 2
    assert [row["selected"] for row in rows[5:]] == ["4.0", "1.0", "1.0"]  # int(0.4 * 4) = 1 in stage 2
    stop_after_checkpoint(monkeypatch, overrides, tmp_path / "stopped", 6)
    run_experiment(compose_experiment(overrides), tmp_path / "stopped", show_progress=False, resume=True)
    assert untimed_metrics(tmp_path / "stopped") == untimed_metrics(tmp_path / "alone")


NOISE = ["dataset=digits", "num_clients=10", "partition=iid", "label_noise.clients=[0,1,2,3,4,5,6,7,8,9]",
         "label_noise.rate=0.9", "label_noise.profile=linear", "num_rounds=12"]


def test_noisy_clients_contribute_less_are_drawn_less_and_the_server_model_keeps_up_with_fedavg(run_quietly):
    """Digits, 10 iid clients, label noise 0 (client 0) .. 0.9 (client 9); 6 rounds of stage 1, 6 of stage 2."""
    summary, folder = run_quietly("strategy=fairequal", "strategy.explore_rounds=6", *NOISE, name="fairequal")
    fedavg, _ = run_quietly("strategy=fedavg", *NOISE, name="fedavg")
    last = read_metrics(folder)[-1]
    psi, selected, distance = (np.array([float(last[f"{name}_client_{p}"]) for p in range(10)])
                               for name in ("contribution", "selected", "distance"))
    assert np.corrcoef(psi, np.arange(10))[0, 1] < -0.9
    assert psi[:5].mean() > 2 * psi[5:].mean()
    assert psi.sum() == pytest.approx(1.0, abs=0.1)
    assert selected.sum() == 6 * 4 and selected[:5].sum() > 3 * selected[5:].sum()
    assert distance[selected == 0].min() > distance[selected > 0].max()  # the drawn hold fresher models
    assert summary["final_accuracy"] > fedavg["final_accuracy"] - 0.03
