"""q-FFL: the server step against a hand computation, q = 0 against FedAvg, and the client's pre-training loss."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

from fedsim.engines import InProcessGrid
from fedsim.protocol.keys import MOMENTUM_KEY
from fedsim.strategies import QFFL
from fedsim.strategies.client_requests import PRETRAIN_EVAL_KEY

from .conftest import EVERY_NODE_TRAINS, train_reply

pytestmark = pytest.mark.usefixtures("task_identity")


def _reply(node_id: int, weights: list[float], pretrain_loss: float, num_examples: int = 10) -> Message:
    return train_reply(node_id, {"w": np.array(weights, dtype=np.float64)}, num_examples, train_loss=9.0,
                       metrics={"pretrain_loss": pretrain_loss})


def _start(strategy, weights: list[float]) -> list[Message]:
    arrays = ArrayRecord({"w": Array(np.array(weights, dtype=np.float64))})
    return list(strategy.configure_train(1, arrays, ConfigRecord({"x": 1}), InProcessGrid(ClientApp(), 2)))


def test_server_step_by_hand():
    """w = (1, 2); client a: w_a = (0, 2), F_a = 2; client b: w_b = (1, 0), F_b = 0.5; lr 0.5 so L = 2; q = 2.

    dw_a = 2 (1, 0) = (2, 0), |dw_a|^2 = 4;  Delta_a = 2^2 (2, 0) = (8, 0);  h_a = 2 * 2 * 4 + 2 * 4 = 24
    dw_b = 2 (0, 2) = (0, 4), |dw_b|^2 = 16; Delta_b = 0.25 (0, 4) = (0, 1); h_b = 2 * 0.5 * 16 + 2 * 0.25 = 16.5
    w' = (1, 2) - (8, 1) / 40.5
    """
    strategy = QFFL(client_learning_rate=0.5, q=2.0, **EVERY_NODE_TRAINS)
    messages = _start(strategy, [1.0, 2.0])
    assert all(m.content["config"][PRETRAIN_EVAL_KEY] and m.content["config"][MOMENTUM_KEY] == 0.0 for m in messages)
    arrays, _ = strategy.aggregate_train(1, [_reply(1, [0.0, 2.0], 2.0), _reply(2, [1.0, 0.0], 0.5)])
    np.testing.assert_allclose(arrays["w"].numpy(), [1 - 8 / 40.5, 2 - 1 / 40.5], rtol=1e-9)
    # effective weights of the local models: L F^q / sum h
    assert strategy.client_weights == pytest.approx({1: 2 * 4 / 40.5, 2: 2 * 0.25 / 40.5})


def test_q_zero_is_fedavgs_direction():
    """q = 0: Delta_k = L (w - w_k), h_k = L, so w' is the plain mean of the local models: FedAvg's aggregate for
    equal-size clients (the reference samples clients in proportion to n_k, which makes it FedAvg in expectation)."""
    local = {1: [0.0, 2.0, 5.0], 2: [1.0, 0.0, -1.0], 3: [4.0, 4.0, 4.0]}
    qffl = QFFL(client_learning_rate=0.1, q=0.0, **EVERY_NODE_TRAINS)
    _start(qffl, [1.0, 2.0, 3.0])
    arrays, _ = qffl.aggregate_train(1, [_reply(node, w, pretrain_loss=1.7 * node) for node, w in local.items()])
    fedavg = FlowerFedAvg(**EVERY_NODE_TRAINS)
    averaged, _ = fedavg.aggregate_train(1, [_reply(node, w, pretrain_loss=1.0) for node, w in local.items()])
    np.testing.assert_allclose(arrays["w"].numpy(), averaged["w"].numpy(), rtol=1e-12)


def test_larger_q_moves_towards_the_worse_client():
    local = {1: [0.0], 2: [10.0]}
    moved = {}
    for q in (0.0, 1.0, 5.0):
        strategy = QFFL(client_learning_rate=1.0, q=q, **EVERY_NODE_TRAINS)
        _start(strategy, [5.0])
        arrays, _ = strategy.aggregate_train(1, [_reply(1, local[1], 0.2), _reply(2, local[2], 2.0)])
        weights = strategy.client_weights
        moved[q] = weights[2] / (weights[1] + weights[2])
    assert moved[0.0] == pytest.approx(0.5) and moved[0.0] < moved[1.0] < moved[5.0]


def test_client_reports_the_loss_before_training():
    """F_k(w^t) is the received model's loss on the client's whole training set, measured before training."""
    import torch
    from flwr.app import Context

    from fedsim.build import build_model
    from fedsim.client import train
    from fedsim.config import compose_experiment
    from fedsim.data import federation_for
    from fedsim.protocol.experiment import experiment_record
    from fedsim.protocol.keys import ROUND_KEY
    from fedsim.training import evaluate

    experiment = compose_experiment(["strategy=qffl"])
    federation = federation_for(experiment)
    torch.manual_seed(0)
    model = build_model(experiment, federation.data)
    config = experiment_record(experiment)
    config[ROUND_KEY], config[PRETRAIN_EVAL_KEY] = 1, True
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "config": config})
    instruction = Message(content, dst_node_id=1, message_type=MessageType.TRAIN)
    instruction.metadata.__dict__["_message_id"] = "m1"
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 3}, state=RecordDict(), run_config={})
    metrics = train(instruction, context).content["metrics"]
    expected = evaluate(model, federation.client_split(3)[0], torch.device("cpu"))
    assert metrics["pretrain_loss"] == pytest.approx(expected.loss)
    assert metrics["pretrain_accuracy"] == pytest.approx(expected.accuracy)
    assert metrics["pretrain_loss"] == pytest.approx(np.log(10), abs=0.2)  # an untrained 10-class model
    assert metrics["train_loss"] < metrics["pretrain_loss"]


def test_qffl_runs_end_to_end(run_quietly):
    import csv

    summary, run_dir = run_quietly("strategy=qffl", "num_rounds=3", "strategy.q=0.1")
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert 0 < float(rows[1]["qffl_step"]) <= 1.0 + 1e-9
    assert summary["final_accuracy"] > 0.2  # measured: 0.30 after 3 rounds (q-FFL steps are short early on)
