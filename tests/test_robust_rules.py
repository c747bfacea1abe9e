"""The robust rules (Krum, Multi-Krum, Bulyan, FedMedian, FedTrimmedAvg): bit for bit Flower's classes on the same
replies, reported weights against hand computations on five or seven tiny clients, a crude outlier left out by
every rule, a Bulyan round with too few replies, and the tie sharing of `order_statistic_shares`."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from flwr.serverapp import strategy as flower

from fedsim.protocol.constraints import InvalidParameter, check_parameters, parameter_constraints
from fedsim.strategies import Bulyan, FedMedian, FedTrimmedAvg, Krum, MultiKrum
from fedsim.strategies.robust import order_statistic_shares

from .conftest import train_reply

pytestmark = pytest.mark.usefixtures("task_identity")


def _replies(values: dict[int, dict[str, np.ndarray] | list[float]], sizes: dict[int, int] | None = None) -> list:
    """One train reply per node (fresh Messages each call: Flower's FedMedian and Bulyan empty the records they
    read). A list of floats is a float64 array "w"."""
    replies = []
    for node, arrays in values.items():
        record = {"w": np.array(arrays, dtype=np.float64)} if isinstance(arrays, list) else arrays
        replies.append(train_reply(node, record, (sizes or {}).get(node, 10), train_loss=float(node)))
    return replies


def _weights(strategy) -> list[float]:  # type: ignore[no-untyped-def]
    return [strategy.client_weights[node] for node in sorted(strategy.client_weights)]


# --- bit for bit Flower's -----------------------------------------------------------------------------------------


def _random_models(count: int, seed: int) -> dict[int, dict[str, np.ndarray]]:
    """Models with a float32 matrix, a float64 vector and a float32 scalar; node 1 is an outlier."""
    rng = np.random.default_rng(seed)
    models = {}
    for node in range(1, count + 1):
        scale = 50.0 if node == 1 else 1.0
        models[node] = {"conv.weight": (scale * rng.normal(size=(3, 4))).astype(np.float32),
                        "fc.bias": scale * rng.normal(size=5),
                        "temperature": np.array(rng.normal(), dtype=np.float32)}
    return models


PAIRS = {  # id: (fedsim's strategy, Flower's strategy, number of replies)
    "krum": (lambda: Krum(num_malicious_nodes=1), lambda: flower.Krum(num_malicious_nodes=1), 7),
    "multikrum": (lambda: MultiKrum(num_malicious_nodes=1, num_nodes_to_select=3),
                  lambda: flower.MultiKrum(num_malicious_nodes=1, num_nodes_to_select=3), 7),
    "multikrum-auto": (lambda: MultiKrum(num_malicious_nodes=1, num_nodes_to_select="auto"),
                       lambda: flower.MultiKrum(num_malicious_nodes=1, num_nodes_to_select=4), 7),  # 7 - 1 - 2
    "bulyan": (lambda: Bulyan(num_malicious_nodes=1), lambda: flower.Bulyan(num_malicious_nodes=1), 8),
    "median-odd": (FedMedian, flower.FedMedian, 7),
    "median-even": (FedMedian, flower.FedMedian, 8),
    "trimmedavg": (lambda: FedTrimmedAvg(beta=0.25), lambda: flower.FedTrimmedAvg(beta=0.25), 9),
}


@pytest.mark.parametrize("name", PAIRS)
def test_the_model_and_metrics_are_flowers_bit_for_bit(name, monkeypatch):
    import flwr.app.message.arrayrecord as arrayrecord

    monkeypatch.setattr(arrayrecord.gc, "collect", lambda: 0)  # Flower's Bulyan collects garbage per reply (slow)
    ours, theirs, count = PAIRS[name]
    models = _random_models(count, seed=len(name))
    sizes = {node: 5 * node for node in models}
    arrays, metrics = ours().aggregate_train(1, _replies(models, sizes))
    expected, expected_metrics = theirs().aggregate_train(1, _replies(models, sizes))
    assert list(arrays.keys()) == list(expected.keys()) == list(models[1])
    for key in arrays.keys():
        got, want = arrays[key].numpy(), expected[key].numpy()
        assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want), key
    assert dict(metrics) == dict(expected_metrics)


# --- reported weights by hand -------------------------------------------------------------------------------------

# Five clients, three coordinates. Per coordinate the median is 3, held by node 1, 2 and 2; with one value cut from
# each tail (trimmed mean, beta = 0.2) the kept values 2, 3, 4 belong to nodes {1, 3, 5}, {2, 4, 5}, {2, 4, 5}.
FIVE = {1: [3, 1, 5], 2: [1, 3, 3], 3: [2, 5, 1], 4: [5, 2, 2], 5: [4, 4, 4]}


def test_median_reports_the_share_of_coordinates_where_a_client_is_the_median():
    strategy = FedMedian()
    arrays, _ = strategy.aggregate_train(1, _replies(FIVE))
    assert arrays["w"].numpy().tolist() == [3, 3, 3]
    assert _weights(strategy) == pytest.approx([1 / 3, 2 / 3, 0, 0, 0])


def test_an_even_median_reports_both_middle_values():
    """Four clients: the middle values are those of nodes 2 and 3 at coordinate 0, of nodes 4 and 3 at coordinate 1
    (each coordinate averages two values, so the shares sum to 2)."""
    strategy = FedMedian()
    arrays, _ = strategy.aggregate_train(1, _replies({1: [1, 1], 2: [2, 4], 3: [3, 3], 4: [4, 2]}))
    assert arrays["w"].numpy().tolist() == [2.5, 2.5]
    assert _weights(strategy) == pytest.approx([0, 1 / 2, 1, 1 / 2])


def test_trimmed_mean_reports_the_share_of_coordinates_kept():
    strategy = FedTrimmedAvg(beta=0.2)  # floor(0.2 * 5) = 1 cut from each tail
    arrays, _ = strategy.aggregate_train(1, _replies(FIVE))
    assert arrays["w"].numpy().tolist() == [3, 3, 3]
    assert _weights(strategy) == pytest.approx([1 / 3, 2 / 3, 1 / 3, 2 / 3, 1])


# On a line x = 0, 1, 3, 5, 100 with f = 1 each client's score is its summed squared distance to its p - f - 2 = 2
# nearest: 1 + 9 = 10, 1 + 4 = 5, 4 + 4 = 8, 4 + 16 = 20, and 95^2 + 97^2 for the outlier.
LINE = {1: [0, 0, 0], 2: [1, 0, 0], 3: [3, 0, 0], 4: [5, 0, 0], 5: [100, 0, 0]}
SIZES = {1: 10, 2: 20, 3: 30, 4: 40, 5: 50}


def test_krum_reports_the_one_reply_it_keeps():
    strategy = Krum(num_malicious_nodes=1)
    arrays, _ = strategy.aggregate_train(1, _replies(LINE, SIZES))
    assert arrays["w"].numpy().tolist() == [1, 0, 0]
    assert _weights(strategy) == [0, 1, 0, 0, 0] and strategy.round_scalars["selected"] == 1


@pytest.mark.parametrize(("m", "weights"), [(3, [10 / 60, 20 / 60, 30 / 60, 0, 0]),
                                           ("auto", [0, 20 / 50, 30 / 50, 0, 0])])
def test_multikrum_reports_n_k_over_the_selected_sizes(m, weights):
    """m = 3 keeps nodes 2, 3, 1 (scores 5, 8, 10); auto keeps p - f - 2 = 2 of them, nodes 2 and 3."""
    strategy = MultiKrum(num_malicious_nodes=1, num_nodes_to_select=m)
    arrays, metrics = strategy.aggregate_train(1, _replies(LINE, SIZES))
    x = sum(w * LINE[node][0] for node, w in zip(LINE, weights, strict=True))
    np.testing.assert_allclose(arrays["w"].numpy(), [x, 0, 0], rtol=1e-15)
    assert _weights(strategy) == pytest.approx(weights) and strategy.round_scalars["selected"] == len(
        [w for w in weights if w])
    # metrics are averaged over the selected replies (train_loss = node id), as Flower does
    assert metrics["train_loss"] == pytest.approx(sum(w * node for node, w in zip(LINE, weights, strict=True)))


def test_bulyan_reports_the_share_of_coordinates_averaged():
    """Seven clients, f = 1: the two far ones (6, 7) have the worst Krum scores, so theta = 5 keeps FIVE; each
    coordinate's median is 3 and its beta = 3 closest values are 2, 3, 4: the trimmed mean's picks."""
    seven = {**FIVE, 6: [1e6, 1e6, 1e6], 7: [-1e6, 1e6, -1e6]}
    strategy = Bulyan(num_malicious_nodes=1)
    arrays, _ = strategy.aggregate_train(1, _replies(seven))
    assert arrays["w"].numpy().tolist() == [3, 3, 3]
    assert _weights(strategy) == pytest.approx([1 / 3, 2 / 3, 1 / 3, 2 / 3, 1, 0, 0])
    assert strategy.round_scalars["selected"] == 5


# --- what the rules are for ---------------------------------------------------------------------------------------

RULES = {
    "krum": lambda: Krum(num_malicious_nodes=1),
    "multikrum": lambda: MultiKrum(num_malicious_nodes=1, num_nodes_to_select="auto"),
    "bulyan": lambda: Bulyan(num_malicious_nodes=1),
    "median": FedMedian,
    "trimmedavg": lambda: FedTrimmedAvg(beta=0.2),
}


@pytest.mark.parametrize("name", RULES)
def test_a_crude_outlier_is_left_out(name):
    """Seven clients near 0 and node 4 at 1e6 everywhere: it gets weight 0 and the model stays near 0 (FedAvg would
    move it to about 1.4e5)."""
    rng = np.random.default_rng(0)
    models = {node: {"w": rng.normal(size=6), "b": rng.normal(size=(2, 2)).astype(np.float32)} for node in range(1, 8)}
    models[4] = {"w": np.full(6, 1e6), "b": np.full((2, 2), 1e6, dtype=np.float32)}
    strategy = RULES[name]()
    arrays, _ = strategy.aggregate_train(1, _replies(models))
    assert strategy.client_weights[4] == 0 and set(strategy.client_weights) == set(models)
    assert sum(strategy.client_weights.values()) > 0
    assert max(np.abs(arrays[key].numpy()).max() for key in arrays.keys()) < 5


def test_a_bulyan_round_with_too_few_replies_is_skipped_as_flower_skips_it(caplog):
    """f = 1 needs 4f + 3 = 7 valid replies; six give no model, no error, a warning and weight 0 for each."""
    six = {node: [float(node), 0.0] for node in range(1, 7)}
    strategy = Bulyan(num_malicious_nodes=1)
    assert strategy.aggregate_train(3, _replies(six)) == (None, None)
    assert flower.Bulyan(num_malicious_nodes=1).aggregate_train(3, _replies(six)) == (None, None)
    assert strategy.client_weights == {node: 0.0 for node in six} and strategy.round_scalars["selected"] == 0
    assert "fewer than 4f + 3 = 7" in caplog.text


def test_integer_arrays_are_the_weighted_mean_in_their_own_dtype():
    """BatchNorm's counter is not an update: n_k-weighted mean over the replies, rounded, still int64."""
    models = {node: {"w": np.array([float(node)]), "bn.num_batches_tracked": np.array(batches, dtype=np.int64)}
              for node, batches in zip((1, 2, 3), (10, 20, 60), strict=True)}
    arrays, _ = FedMedian().aggregate_train(1, _replies(models, {1: 1, 2: 1, 3: 2}))
    counter = arrays["bn.num_batches_tracked"].numpy()
    assert counter.dtype == np.int64 and counter.tolist() == [38]  # (10 + 20 + 2 * 60) / 4 = 37.5, rounded to even
    assert arrays["w"].numpy().tolist() == [2.0]


# --- the report's tie sharing -------------------------------------------------------------------------------------


def test_tied_values_share_the_places_they_compete_for():
    column = np.array([[1.0], [2.0], [2.0], [2.0], [9.0]])
    assert order_statistic_shares(column, 2, 2).tolist() == pytest.approx([0, 1 / 3, 1 / 3, 1 / 3, 0])  # median
    column = np.array([[1.0], [1.0], [1.0], [5.0], [9.0]])
    assert order_statistic_shares(column, 1, 3).tolist() == pytest.approx([2 / 3, 2 / 3, 2 / 3, 1, 0])  # trimmed


def test_shares_are_the_expected_picks_over_every_tie_break():
    """Five rows of values in {0, 1, 2} (many ties): the share of ranks first..last equals the mean, over all 120
    orders of breaking ties, of whether the row lands in those ranks."""
    rng = np.random.default_rng(1)
    values = rng.integers(0, 3, size=(5, 40)).astype(np.float64)
    for first, last in [(2, 2), (1, 2), (1, 3), (0, 2), (0, 4)]:
        expected = np.zeros(5)
        orders = list(itertools.permutations(range(5)))
        for order in orders:
            ranks = np.empty_like(values, dtype=int)
            for column in range(values.shape[1]):  # sort by value, ties broken by `order`
                ranked = np.lexsort((np.array(order), values[:, column]))
                ranks[ranked, column] = np.arange(5)
            expected += ((ranks >= first) & (ranks <= last)).sum(axis=1)
        np.testing.assert_allclose(order_statistic_shares(values, first, last), expected / len(orders), rtol=1e-12)


# --- parameters ---------------------------------------------------------------------------------------------------


def test_parameters_are_declared_with_flowers_names():
    check_parameters(parameter_constraints(MultiKrum), {"num_malicious_nodes": 3, "num_nodes_to_select": "auto"})
    check_parameters(parameter_constraints(Bulyan), {"selection_rule": None, "num_malicious_nodes": 0})
    check_parameters(parameter_constraints(Bulyan), {"selection_rule": "multikrum"})
    check_parameters(parameter_constraints(FedTrimmedAvg), {"beta": 0.0, "stragglers_fraction": 0.5})
    for cls, values in [(MultiKrum, {"num_nodes_to_select": 0}), (MultiKrum, {"num_nodes_to_select": "all"}),
                        (Krum, {"num_malicious_nodes": -1}), (Bulyan, {"selection_rule": "krum"}),
                        (FedTrimmedAvg, {"beta": 0.5})]:
        with pytest.raises(InvalidParameter):
            check_parameters(parameter_constraints(cls), values)
    with pytest.raises(ValueError, match="num_nodes_to_select"):
        MultiKrum(num_nodes_to_select="some")
    with pytest.raises(ValueError, match="beta"):
        FedTrimmedAvg(beta=0.5)


def test_bulyan_takes_a_selection_function():
    """Flower's `selection_rule`: here the first theta = 5 replies, so the last two are left out whatever they hold."""
    def first_ones(contents, num_malicious_nodes, num_nodes_to_select):  # type: ignore[no-untyped-def]
        return contents[:num_nodes_to_select]

    strategy = Bulyan(num_malicious_nodes=1, selection_rule=first_ones)
    arrays, _ = strategy.aggregate_train(1, _replies({**FIVE, 6: [0, 0, 0], 7: [9, 9, 9]}))
    assert arrays["w"].numpy().tolist() == [3, 3, 3]
    assert _weights(strategy)[5:] == [0, 0]
