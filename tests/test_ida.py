"""IDA: the weights of every option against hand computations on three tiny clients, the per-layer average, buffers
left out of the distance, the degenerate cohorts (identical models, one client), and the refused combination."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.config import compose_experiment, validate
from fedsim.errors import ConfigError
from fedsim.protocol.constraints import InvalidParameter
from fedsim.protocol.keys import TRAIN_ACCURACY
from fedsim.strategies import IDA

from .conftest import EVERY_NODE_TRAINS, train_reply

pytestmark = pytest.mark.usefixtures("task_identity")

NODES = (1, 2, 3)
S2, S5 = np.sqrt(2), np.sqrt(5)


def _model(weight, bias, running_mean=0.0, batches=4) -> dict[str, np.ndarray]:
    return {"layer.weight": np.array(weight, dtype=np.float64), "layer.bias": np.array([bias], dtype=np.float64),
            "bn.running_mean": np.array([running_mean], dtype=np.float64),
            "bn.num_batches_tracked": np.array(batches, dtype=np.int64)}


# Trainable parameters: A = (0, 0 | 0), B = (3, 0 | 0), C = (0, 0 | 3); plain mean (1, 0 | 1), so
# d = (sqrt2, sqrt5, sqrt5). Node A's running_mean (100) would dominate the distance if buffers counted.
MODELS = (_model([0, 0], 0, running_mean=100.0, batches=2), _model([3, 0], 0, batches=4), _model([0, 0], 3, batches=8))


def _replies(models=MODELS, sizes=(2, 1, 1), accuracies=(0.5, 0.8, 1.0)):
    return [train_reply(node, model, size, metrics={TRAIN_ACCURACY: acc})
            for node, model, size, acc in zip(NODES, models, sizes, accuracies, strict=True)]


def _aggregate(replies=None, **options):
    strategy = IDA(**EVERY_NODE_TRAINS, **options)
    arrays, _ = strategy.aggregate_train(1, replies if replies is not None else _replies())
    weights = np.array([strategy.client_weights[node] for node in sorted(strategy.client_weights)])
    return strategy, {name: array.numpy() for name, array in arrays.items()}, weights


def _normalised(*values: float) -> np.ndarray:
    array = np.array(values)
    return array / array.sum()


def test_global_distance_with_the_plain_mean_by_hand():
    _, arrays, weights = _aggregate()
    alpha = _normalised(1 / S2, 1 / S5, 1 / S5)
    np.testing.assert_allclose(weights, alpha, rtol=1e-7)
    np.testing.assert_allclose(arrays["layer.weight"], [3 * alpha[1], 0], rtol=1e-7)
    np.testing.assert_allclose(arrays["layer.bias"], [3 * alpha[2]], rtol=1e-7)
    # buffers: n_k-weighted with n = (2, 1, 1), as FedAvg
    np.testing.assert_allclose(arrays["bn.running_mean"], [50.0], rtol=1e-12)
    assert arrays["bn.num_batches_tracked"] == np.rint((2 * 2 + 4 + 8) / 4) and arrays[
        "bn.num_batches_tracked"].dtype == np.int64


def test_per_layer_distances_average_each_array_with_its_own_weights():
    """weight: mean (1, 0), d = (1, 2, 1), alpha = (.4, .2, .4); bias: mean 1, d = (1, 1, 2), alpha = (.4, .4, .2)."""
    strategy, arrays, weights = _aggregate(distance="per_layer")
    np.testing.assert_allclose(strategy.layer_weights["layer.weight"], [0.4, 0.2, 0.4], rtol=1e-7)
    np.testing.assert_allclose(strategy.layer_weights["layer.bias"], [0.4, 0.4, 0.2], rtol=1e-7)
    np.testing.assert_allclose(weights, [0.4, 0.3, 0.3], rtol=1e-7)
    np.testing.assert_allclose(arrays["layer.weight"], [0.6, 0.0], rtol=1e-7)
    np.testing.assert_allclose(arrays["layer.bias"], [0.6], rtol=1e-7)
    np.testing.assert_allclose(arrays["bn.running_mean"], [50.0], rtol=1e-12)


def test_the_weighted_mean():
    """n = (2, 1, 1): w-bar = (0.75, 0 | 0.75), d = 0.75 (sqrt2, sqrt10, sqrt10), alpha ~ (sqrt5, 1, 1)."""
    _, _, weights = _aggregate(mean="weighted")
    np.testing.assert_allclose(weights, _normalised(S5, 1, 1), rtol=1e-7)


def test_ida_with_fedavg_weights_multiplies_by_the_example_counts():
    _, _, weights = _aggregate(weight_by_examples=True)
    np.testing.assert_allclose(weights, _normalised(2 / S2, 1 / S5, 1 / S5), rtol=1e-7)


def test_intrac_alone_and_with_ida():
    """acc = (0.5, 0.8, 1.0): 1/acc = (2, 1.25, 1)."""
    _, arrays, alone = _aggregate(inverse_train_accuracy=True, inverse_distance=False)
    np.testing.assert_allclose(alone, _normalised(2, 1.25, 1), rtol=1e-7)
    np.testing.assert_allclose(arrays["layer.weight"], [3 * 1.25 / 4.25, 0], rtol=1e-7)
    _, _, both = _aggregate(inverse_train_accuracy=True)
    np.testing.assert_allclose(both, _normalised(2 / S2, 1.25 / S5, 1 / S5), rtol=1e-7)
    _, _, all_three = _aggregate(inverse_train_accuracy=True, weight_by_examples=True, distance="per_layer")
    layer = np.array([[1 / 1, 1 / 2, 1 / 1], [1 / 1, 1 / 1, 1 / 2]]) * np.array([2 * 2, 1.25, 1])
    np.testing.assert_allclose(all_three, (layer / layer.sum(axis=1, keepdims=True)).mean(axis=0), rtol=1e-7)


def test_intrac_needs_the_training_accuracy():
    replies = [train_reply(node, model, 1) for node, model in zip(NODES, MODELS, strict=True)]
    with pytest.raises(ValueError, match=TRAIN_ACCURACY):
        _aggregate(replies, inverse_train_accuracy=True)


def test_buffers_are_not_part_of_the_distance():
    moved = [_model([0, 0], 0, running_mean=-1e6, batches=1), MODELS[1], _model([0, 0], 3, running_mean=7.0)]
    for distance in ("global", "per_layer"):
        _, _, before = _aggregate(distance=distance)
        _, _, after = _aggregate(_replies(moved), distance=distance)
        np.testing.assert_array_equal(after, before)


def test_identical_models_and_a_single_client_give_equal_weights():
    same = [_model([1.5, -2], 0.25)] * 3
    for distance in ("global", "per_layer"):
        _, arrays, weights = _aggregate(_replies(same), distance=distance)
        np.testing.assert_allclose(weights, [1 / 3] * 3, rtol=1e-12)
        np.testing.assert_allclose(arrays["layer.weight"], [1.5, -2], rtol=1e-12)
        strategy = IDA(**EVERY_NODE_TRAINS, distance=distance)
        arrays, _ = strategy.aggregate_train(1, [train_reply(9, MODELS[1], 5, metrics={TRAIN_ACCURACY: 0.0})])
        assert strategy.client_weights == {9: 1.0}
        np.testing.assert_array_equal(arrays["layer.weight"].numpy(), [3, 0])


def test_a_far_away_client_gets_the_smallest_weight():
    rng = np.random.default_rng(3)
    models = [_model(rng.normal(0, 0.1, 2), rng.normal(0, 0.1)) for _ in range(3)] + [_model([5, 5], -5)]
    replies = [train_reply(node, model, 1) for node, model in enumerate(models, start=1)]
    for distance in ("global", "per_layer"):
        strategy = IDA(**EVERY_NODE_TRAINS, distance=distance)
        strategy.aggregate_train(1, replies)
        others = [weight for node, weight in strategy.client_weights.items() if node != 4]
        # the plain mean moves 1/4 of the way to the outlier: its distance is about 3x the others'
        assert strategy.client_weights[4] < 0.5 * min(others)


def test_neither_inverse_distance_nor_inverse_accuracy_is_refused_in_one_line():
    with pytest.raises(InvalidParameter):
        IDA.check_arguments({"inverse_distance": False, "inverse_train_accuracy": False})
    IDA.check_arguments({"inverse_distance": False, "inverse_train_accuracy": True})
    with pytest.raises(ValueError):
        IDA(inverse_distance=False)
    with pytest.raises(ConfigError, match=r"^strategy\.inverse_distance=False is not allowed") as refused:
        validate(compose_experiment(["strategy=ida", "strategy.inverse_distance=false"]))
    assert "\n" not in str(refused.value)
