"""FairFed: weights against a hand computation over two rounds, beta = 0 against FedAvg, clipping at 0, the
accuracy-gap fallback, the client's pre-training group counts, and an end-to-end run."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

from fedsim.engines import InProcessGrid
from fedsim.fairness import GroupCounts
from fedsim.strategies import FairFed
from fedsim.strategies.client_requests import PRETRAIN_EVAL_KEY
from fedsim.strategies.fairfed import fairness_gaps

from .conftest import EVERY_NODE_TRAINS, train_reply

pytestmark = pytest.mark.usefixtures("task_identity")

# Three clients' counts of the received model: total[a][y], positive[a][y], correct.
# 1: n = 10, SPD = 3/5 - 1/5 = 0.4, correct 2 + 2 + 1 + 2 = 7 (acc 0.7)
# 2: n = 10, only A = 0 (SPD undefined), correct 5 + 3 = 8 (acc 0.8)
# 3: n = 20, SPD = 6/10 - 4/10 = 0.2, correct 4 + 3 + 2 + 3 = 12 (acc 0.6)
COUNTS = {
    1: GroupCounts(np.array([[3, 2], [2, 3]]), np.array([[1, 2], [0, 1]]), 7),
    2: GroupCounts(np.array([[4, 6], [0, 0]]), np.array([[1, 5], [0, 0]]), 8),
    3: GroupCounts(np.array([[5, 5], [5, 5]]), np.array([[2, 4], [2, 2]]), 12),
}
LOCAL = {1: [1.0, 0.0], 2: [2.0, 10.0], 3: [4.0, -2.0]}
# Pooled: total [[12, 13], [7, 8]], positive [[4, 11], [2, 3]], correct 27 of 40:
# SPD_g = 15/25 - 5/15 = 4/15, Acc_g = 0.675.
# Delta_1 = |0.4 - 4/15| = 2/15, Delta_2 = |0.8 - 0.675| = 0.125 (fallback), Delta_3 = |0.2 - 4/15| = 1/15;
# mean Delta = (2/15 + 0.125 + 1/15) / 3 = 0.325 / 3.
GAPS = np.array([2 / 15, 0.125, 1 / 15])
MEAN_GAP = 0.325 / 3


def _replies(counts: dict[int, GroupCounts] = COUNTS) -> list[Message]:
    return [train_reply(node, {"w": np.array(LOCAL[node], dtype=np.float64)}, counts[node].num_examples,
                        metrics=counts[node].to_metrics()) for node in sorted(counts)]


def test_gaps_by_hand():
    np.testing.assert_allclose(fairness_gaps([COUNTS[k] for k in (1, 2, 3)], "spd"), GAPS, rtol=1e-12)


@pytest.mark.parametrize("beta", [1.0, 40.0])
def test_two_rounds_by_hand(beta):
    """omega_bar^0 = n_k = (10, 10, 20), declearn's scale; each round subtracts beta (Delta_k - mean Delta) (the same
    replies twice, so the same step twice); nothing is clipped and the omega_bar keep summing to n = 40. beta = 40
    is the paper's beta_p = 1 on its omega_bar^0 = n_k / n scale."""
    strategy = FairFed(beta=beta, metric="spd", **EVERY_NODE_TRAINS)
    expected_bar = np.array([10.0, 10.0, 20.0])
    for server_round in (1, 2):
        arrays, _ = strategy.aggregate_train(server_round, _replies())
        expected_bar = expected_bar - beta * (GAPS - MEAN_GAP)
        assert [strategy.omega_bar[k] for k in (1, 2, 3)] == pytest.approx(list(expected_bar), abs=1e-12)
        omega = expected_bar / expected_bar.sum()
        assert [strategy.client_weights[k] for k in (1, 2, 3)] == pytest.approx(list(omega), abs=1e-12)
        expected = sum(w * np.array(LOCAL[k]) for w, k in zip(omega, (1, 2, 3), strict=True))
        np.testing.assert_allclose(arrays["w"].numpy(), expected, rtol=1e-12)
        assert strategy.round_scalars["fairfed_global_metric"] == pytest.approx(4 / 15)
        assert strategy.round_scalars["fairfed_mean_gap"] == pytest.approx(MEAN_GAP)
    # round 2 by hand: 10 - 2 beta (2/15 - 0.325/3) = 10 - 0.05 beta, 10 - 2 beta (0.125 - 0.325/3) = 10 - beta / 30,
    # 20 + 2 beta (0.325/3 - 1/15) = 20 + beta / 12
    assert [strategy.omega_bar[k] for k in (1, 2, 3)] == pytest.approx([10 - 0.05 * beta, 10 - beta / 30,
                                                                        20 + beta / 12])
    # the paper's scale: omega^2 = (0.25, 0.25, 0.5) - 2 beta_p (Delta - mean Delta) with beta_p = beta / n
    paper = np.array([0.25, 0.25, 0.5]) - 2 * (beta / 40) * (GAPS - MEAN_GAP)
    assert [strategy.client_weights[k] for k in (1, 2, 3)] == pytest.approx(list(paper / paper.sum()), abs=1e-12)


def test_beta_zero_is_fedavg():
    fairfed = FairFed(beta=0.0, metric="eod", **EVERY_NODE_TRAINS)
    for server_round in (1, 2):
        arrays, _ = fairfed.aggregate_train(server_round, _replies())
    fedavg, _ = FlowerFedAvg(**EVERY_NODE_TRAINS).aggregate_train(1, _replies())
    np.testing.assert_allclose(arrays["w"].numpy(), fedavg["w"].numpy(), rtol=1e-12)
    assert [fairfed.client_weights[k] for k in (1, 2, 3)] == pytest.approx([0.25, 0.25, 0.5])


def test_weights_are_clipped_at_zero():
    """beta = 800: omega_bar = 10 - 800 * 0.025 = -10 -> 0; 10 - 800 * (0.125 - 0.325/3) = -3.33 -> 0;
    20 + 800 * (0.325/3 - 1/15) = 53.33: the aggregate is client 3's model."""
    strategy = FairFed(beta=800.0, metric="spd", **EVERY_NODE_TRAINS)
    arrays, _ = strategy.aggregate_train(1, _replies())
    assert [strategy.omega_bar[k] for k in (1, 2, 3)] == pytest.approx([0.0, 0.0, 20 + 800 * (MEAN_GAP - 1 / 15)])
    assert strategy.client_weights == pytest.approx({1: 0.0, 2: 0.0, 3: 1.0})
    np.testing.assert_allclose(arrays["w"].numpy(), LOCAL[3])


def test_eod_falls_back_to_accuracy_without_positive_labels_in_a_group():
    """Client b holds both groups but no Y=1 example of A=1: its EOD is undefined (accuracy gap), its SPD is not."""
    a = GroupCounts(np.array([[2, 2], [2, 2]]), np.array([[0, 2], [0, 1]]), 7)  # EOD 1 - 1/2, SPD 2/4 - 1/4
    b = GroupCounts(np.array([[2, 2], [4, 0]]), np.array([[1, 1], [2, 0]]), 3)  # SPD 2/4 - 2/4 = 0
    # pooled: total [[4, 4], [6, 2]], positive [[1, 3], [2, 1]], correct 10 of 16
    eod_g, acc_g = 3 / 4 - 1 / 2, 10 / 16
    np.testing.assert_allclose(fairness_gaps([a, b], "eod"), [abs(0.5 - eod_g), abs(3 / 8 - acc_g)])
    spd_g = 4 / 8 - 3 / 8
    np.testing.assert_allclose(fairness_gaps([a, b], "spd"), [abs(0.25 - spd_g), abs(0.0 - spd_g)])


def test_asks_for_pretraining_evaluation_and_refuses_replies_without_counts():
    strategy = FairFed(**EVERY_NODE_TRAINS)
    arrays = ArrayRecord({"w": Array(np.zeros(2))})
    messages = list(strategy.configure_train(1, arrays, ConfigRecord({"x": 1}), InProcessGrid(ClientApp(), 2)))
    assert len(messages) == 2 and all(m.content["config"][PRETRAIN_EVAL_KEY] for m in messages)
    instruction = Message(RecordDict(), dst_node_id=5, message_type=MessageType.TRAIN)
    instruction.metadata.__dict__["_message_id"] = "m5"
    plain = Message(RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 3})}), reply_to=instruction)
    with pytest.raises(ValueError, match="group counts"):
        strategy.aggregate_train(1, [plain])


@pytest.mark.parametrize("kwargs", [{"beta": -1.0}, {"metric": "dp"}])
def test_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        FairFed(**kwargs, **EVERY_NODE_TRAINS)


def test_client_reports_group_counts_of_the_received_model():
    import torch
    from flwr.app import Context

    from fedsim.build import build_model
    from fedsim.client import train
    from fedsim.config import compose_experiment
    from fedsim.data import federation_for
    from fedsim.fairness import model_group_counts
    from fedsim.protocol.experiment import experiment_record
    from fedsim.protocol.keys import ROUND_KEY

    experiment = compose_experiment(["dataset=fair_synthetic", "strategy=fairfed", "partition.partition_by=sensitive",
                                     "num_clients=5", "model=logreg"])
    federation = federation_for(experiment)
    torch.manual_seed(0)
    model = build_model(experiment, federation.data)
    config = experiment_record(experiment)
    config[ROUND_KEY], config[PRETRAIN_EVAL_KEY] = 1, True
    instruction = Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "config": config}),
                          dst_node_id=1, message_type=MessageType.TRAIN)
    instruction.metadata.__dict__["_message_id"] = "m1"
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 2}, state=RecordDict(), run_config={})
    metrics = train(instruction, context).content["metrics"]
    reported = GroupCounts.from_metrics(metrics)
    expected = model_group_counts(model, federation.client_split(2)[0], torch.device("cpu"))
    assert reported.total.tolist() == expected.total.tolist()
    assert reported.positive.tolist() == expected.positive.tolist()
    assert reported.correct == expected.correct and reported.accuracy == pytest.approx(metrics["pretrain_accuracy"])


def test_fairfed_needs_a_sensitive_attribute():
    from fedsim.config import compose_experiment, validate
    from fedsim.errors import ConfigError

    with pytest.raises(ConfigError, match="sensitive attribute"):
        validate(compose_experiment(["strategy=fairfed"]))
    with pytest.raises(ConfigError, match="strategy.metric"):
        validate(compose_experiment(["dataset=fair_synthetic", "strategy=fairfed", "strategy.metric=dp"]))


def test_fairfed_runs_end_to_end(run_quietly):
    from tests.conftest import read_metrics

    summary, run_dir = run_quietly("dataset=fair_synthetic", "strategy=fairfed", "partition=dirichlet",
                                   "partition.partition_by=sensitive", "partition.alpha=0.5", "num_rounds=3",
                                   "model=logreg", "num_clients=5")
    rows = read_metrics(run_dir)
    assert len(rows) == 4 and all(row["test_spd"] != "" and row["test_eod"] != "" for row in rows)
    for row in rows[1:]:
        weights = [float(row[f"weight_client_{pid}"]) for pid in range(5)]
        assert sum(weights) == pytest.approx(1.0) and min(weights) >= 0
        assert float(row["fairfed_mean_gap"]) >= 0
    assert summary["final_accuracy"] > 0.75  # measured 0.850 (a centralised logistic regression: 0.876)
    assert abs(summary["fairness"]["test_eod"]) < 1 and summary["fairness"]["test_spd"] > 0
