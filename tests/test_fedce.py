"""FedCE: weights and aggregate against hand computations over two rounds, `times` mode, partial participation,
the client's minus model and running score, the client reply, and an end-to-end run."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsim.engines import InProcessGrid
from fedsim.errors import ConfigError
from fedsim.strategies import FedCE
from fedsim.strategies.fedce import COEF_KEY, MINUS_SCORE, client_minus_score, minus_model, remember_local_model

from .conftest import EVERY_NODE_TRAINS, train_reply

pytestmark = pytest.mark.usefixtures("task_identity")

NODES = (1001, 1002, 1003)  # InProcessGrid's node ids for partitions 0, 1, 2
A = 1 - 1 / np.sqrt(5)


def _record(w, running_mean, batches) -> ArrayRecord:
    return ArrayRecord({"w": Array(np.array(w, dtype=np.float64)),
                        "bn.running_mean": Array(np.array(running_mean, dtype=np.float64)),
                        "bn.num_batches_tracked": Array(np.array(batches, dtype=np.int64))})


def _reply(node_id: int, record: ArrayRecord, minus_score: float) -> Message:
    return train_reply(node_id, record, 10, metrics={MINUS_SCORE: minus_score})


def _configure(strategy: FedCE, server_round: int, record: ArrayRecord) -> dict[int, float]:
    messages = strategy.configure_train(server_round, record, ConfigRecord({"x": 1}), InProcessGrid(ClientApp(), 3))
    return {m.metadata.dst_node_id: m.content["config"][COEF_KEY] for m in messages}


def _cos(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


ROUND1 = {1001: ([3, 0], [10], [2]), 1002: ([0, 3], [0], [2]), 1003: ([3, 3], [0], [2])}


def _round1(strategy: FedCE, scores=(1.0, 1.0, 1.0)) -> ArrayRecord:
    assert _configure(strategy, 1, _record([0, 0], [0], [0])) == {node: 0.0 for node in NODES}
    replies = [_reply(node, _record(*ROUND1[node]), s) for node, s in zip(NODES, scores, strict=True)]
    arrays, _ = strategy.aggregate_train(1, replies)
    return arrays


def test_two_rounds_by_hand():
    """Round 1 from theta = 0, prior 1/3: Delta = (3,0), (0,3), (3,3), so g = (2,2) and g_-i = (1,2), (2,1), (1,1):
    cos = 1/sqrt5, 1/sqrt5, 1 (the running_mean buffer, 10 for node 1, is left out of the cosine).
    c = (A, A, 0) with A = 1 - 1/sqrt5; c_hat = (A, A, 1e-6) / (2A + 1e-6); s = 1 for all, s_hat = 1/3;
    p = (c_hat + s_hat) / 2, and theta^1 = sum p_i theta_i."""
    strategy = FedCE(**EVERY_NODE_TRAINS)
    arrays = _round1(strategy)
    c_hat = np.array([A, A, 1e-6]) / (2 * A + 1e-6)
    p1 = (c_hat + 1 / 3) / 2
    assert [strategy.client_weights[n] for n in NODES] == pytest.approx(p1, rel=1e-9)
    assert p1[0] == pytest.approx(5 / 12, rel=1e-5) and p1[2] == pytest.approx(1 / 6, rel=1e-5)
    theta1 = np.array([3 * p1[0] + 3 * p1[2], 3 * p1[1] + 3 * p1[2]])
    np.testing.assert_allclose(arrays["w"].numpy(), theta1, rtol=1e-12)
    np.testing.assert_allclose(arrays["bn.running_mean"].numpy(), [10 * p1[0]], rtol=1e-12)
    batches = arrays["bn.num_batches_tracked"].numpy()
    assert batches.tolist() == [2] and batches.dtype == np.int64

    # Round 2: every node learns its round-1 weight; the prior is p1 (not 1/3), cosines are averaged over 2 rounds.
    coefs = _configure(strategy, 2, arrays)
    assert [coefs[n] for n in NODES] == pytest.approx(p1, rel=1e-9)
    deltas = {1001: [1, 0], 1002: [0, 2], 1003: [-1, -1]}
    scores = {1001: 0.8, 1002: 0.5, 1003: 0.2}
    replies = [_reply(n, _record(theta1 + deltas[n], [10 * p1[0]], [4]), scores[n]) for n in NODES]
    arrays2, _ = strategy.aggregate_train(2, replies)

    def expected_weights(prior):
        g = prior[0] * np.array([1, 0]) + prior[1] * np.array([0, 2]) + prior[2] * np.array([-1, -1])
        cos2 = [_cos(deltas[n], g - prior[i] * np.array(deltas[n])) for i, n in enumerate(NODES)]
        cos1 = [1 / np.sqrt(5), 1 / np.sqrt(5), 1.0]
        c = np.maximum(0, 1 - (np.array(cos1) + np.array(cos2)) / 2)
        c_hat = np.maximum(c, 1e-6) / np.maximum(c, 1e-6).sum()
        return (c_hat + np.array([0.8, 0.5, 0.2]) / 1.5) / 2

    p2 = expected_weights(p1)
    assert [strategy.client_weights[n] for n in NODES] == pytest.approx(p2, rel=1e-9)
    assert not np.allclose(p2, expected_weights(np.full(3, 1 / 3)), rtol=1e-3)  # the prior matters here
    step = sum(p2[i] * np.array(deltas[n]) for i, n in enumerate(NODES))
    np.testing.assert_allclose(arrays2["w"].numpy(), theta1 + step, rtol=1e-12)
    assert arrays2["bn.num_batches_tracked"].numpy().tolist() == [4]


def test_times_mode_multiplies_the_normalised_scores():
    strategy = FedCE(mode="times", **EVERY_NODE_TRAINS)
    _round1(strategy, scores=(0.6, 0.3, 0.1))
    c_hat = np.array([A, A, 1e-6]) / (2 * A + 1e-6)
    product = np.maximum(c_hat * np.array([0.6, 0.3, 0.1]), 1e-6)  # s_hat = s (they sum to 1); p_3 ~ 1e-7 is clamped
    assert [strategy.client_weights[n] for n in NODES] == pytest.approx(product / product.sum(), rel=1e-9)
    with pytest.raises(ValueError, match="mode"):
        FedCE(mode="sum", **EVERY_NODE_TRAINS)


def test_partial_participation_renormalises_the_prior_and_zeroes_absent_coefs():
    strategy = FedCE(**EVERY_NODE_TRAINS)
    arrays = _round1(strategy)
    p1 = [strategy.client_weights[n] for n in NODES]
    _configure(strategy, 2, arrays)
    theta1 = arrays["w"].numpy()
    replies = [_reply(1001, _record(theta1 + [1, 0], [0], [4]), 0.5),
               _reply(1002, _record(theta1 + [1, 1], [0], [4]), 0.5)]
    strategy.aggregate_train(2, replies)
    prior = np.array(p1[:2]) / (p1[0] + p1[1])
    g = prior[0] * np.array([1, 0]) + prior[1] * np.array([1, 1])
    cos = [_cos([1, 0], g - prior[0] * np.array([1, 0])), _cos([1, 1], g - prior[1] * np.array([1, 1]))]
    c = 1 - (np.array([1 / np.sqrt(5), 1 / np.sqrt(5)]) + cos) / 2
    expected = (c / c.sum() + 0.5) / 2
    assert strategy.client_weights == pytest.approx({1001: expected[0], 1002: expected[1]}, rel=1e-9)
    coefs = _configure(strategy, 3, arrays)
    assert coefs[1003] == 0.0 and coefs[1001] == pytest.approx(expected[0])  # 1003's model is not in theta^2


def test_missing_minus_score_is_an_error():
    strategy = FedCE(**EVERY_NODE_TRAINS)
    _configure(strategy, 1, _record([0, 0], [0], [0]))
    instruction = Message(RecordDict(), dst_node_id=1001, message_type=MessageType.TRAIN)
    instruction.metadata.__dict__["_message_id"] = "m"
    content = RecordDict({"arrays": _record([1, 1], [0], [1]), "metrics": MetricRecord({"num-examples": 3})})
    reply = Message(content, reply_to=instruction)
    with pytest.raises(ValueError, match=MINUS_SCORE):
        strategy.aggregate_train(1, [reply])


def test_minus_model_formula():
    """(theta - p theta_local) / (1 - p) with theta = (1, 2), theta_local = (3, 0), p = 0.25: (1/3, 8/3)."""
    global_arrays = ArrayRecord({"w": Array(np.array([1.0, 2.0], dtype=np.float32)),
                                 "n": Array(np.array([7], dtype=np.int64))})
    local = ArrayRecord({"w": Array(np.array([3.0, 0.0], dtype=np.float32)),
                         "n": Array(np.array([99], dtype=np.int64))})
    minus = minus_model(global_arrays, local, 0.25)
    np.testing.assert_allclose(minus["w"].numpy(), [1 / 3, 8 / 3], rtol=1e-6)
    assert minus["w"].numpy().dtype == np.float32 and minus["n"].numpy().tolist() == [7]
    np.testing.assert_array_equal(minus_model(global_arrays, local, 0.9999)["w"].numpy(), [1.0, 2.0])  # p ~ 1: theta


def test_client_minus_score_is_one_minus_the_running_mean():
    state = RecordDict()
    global_arrays = ArrayRecord({"w": Array(np.array([1.0, 2.0]))})
    seen = []

    def accuracy_of(arrays):
        seen.append(arrays["w"].numpy().tolist())
        return {0: 0.6, 1: 0.9}[len(seen) - 1]

    assert client_minus_score(state, global_arrays, 0.0, accuracy_of) == 1.0 and not seen  # m = 0 at first
    remember_local_model(state, ArrayRecord({"w": Array(np.array([3.0, 0.0]))}))
    assert client_minus_score(state, global_arrays, 0.25, accuracy_of) == pytest.approx(1 - 0.6 / 2)
    assert seen[0] == pytest.approx([1 / 3, 8 / 3])
    assert client_minus_score(state, global_arrays, 0.0, accuracy_of) == pytest.approx(1 - 1.5 / 3)
    assert seen[1] == [1.0, 2.0]


def test_client_reply_carries_the_minus_score():
    """Round 1: s = 1. Round 2 with theta = (theta^0 + theta_local) / 2 and p = 0.5: the minus model is theta^0, so
    s = 1 - acc(theta^0 on the validation split) / 2."""
    import torch

    from fedsim.build import build_model
    from fedsim.client import train
    from fedsim.config import compose_experiment
    from fedsim.data import federation_for
    from fedsim.protocol.experiment import experiment_record
    from fedsim.protocol.keys import ROUND_KEY
    from fedsim.training import evaluate

    experiment = compose_experiment(["strategy=fedce"])
    federation = federation_for(experiment)
    torch.manual_seed(0)
    model = build_model(experiment, federation.data)
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 2}, state=RecordDict(), run_config={})

    def send(server_round: int, arrays: ArrayRecord, coef: float) -> Message:
        config = experiment_record(experiment)
        config[ROUND_KEY], config[COEF_KEY] = server_round, coef
        instruction = Message(RecordDict({"arrays": arrays, "config": config}), dst_node_id=1,
                              message_type=MessageType.TRAIN)
        instruction.metadata.__dict__["_message_id"] = f"m{server_round}"
        return train(instruction, context)

    theta0 = ArrayRecord(model.state_dict())
    first = send(1, theta0, 0.0)
    assert first.content["metrics"][MINUS_SCORE] == 1.0
    local = first.content["arrays"]
    mixed = ArrayRecord({k: Array((theta0[k].numpy() + local[k].numpy()) / 2) for k in theta0})
    second = send(2, mixed, 0.5)
    accuracy = evaluate(model, federation.client_split(2)[1], torch.device("cpu")).accuracy
    assert 0 < accuracy < 0.5  # an untrained model
    assert second.content["metrics"][MINUS_SCORE] == pytest.approx(1 - accuracy / 2, abs=1e-9)


@pytest.mark.parametrize("override", ["strategy.mode=sum"])
def test_config_refuses_bad_mode(override):
    from fedsim.config import compose_experiment, validate

    with pytest.raises(ConfigError, match="strategy.mode"):
        validate(compose_experiment(["strategy=fedce", override]))


def test_fedce_runs_end_to_end(run_quietly):
    from tests.conftest import read_metrics

    summary, run_dir = run_quietly("strategy=fedce", "num_rounds=3")
    rows = read_metrics(run_dir)
    weights = [float(rows[-1][f"weight_client_{pid}"]) for pid in range(10)]
    assert sum(weights) == pytest.approx(1.0) and min(weights) > 0
    assert summary["final_accuracy"] > 0.55  # measured: 0.664 (FedAvg: 0.758) after 3 rounds; 0.944 after 10
