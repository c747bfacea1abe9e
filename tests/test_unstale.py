"""Unstale (`fedsim.strategies.unstale`) and its gradient inversion (`fedsim.strategies.gradient_inversion`): the
conversions by hand, an inversion that recovers a tiny linear model's update, the stale clients' old models, the
switch rules, and short digits runs (inversion with the drift switch, the oracle's stage, a resumed run)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from torch import nn

from fedsim.protocol.keys import ARRAYS_RECORD
from fedsim.strategies.gradient_inversion import (
    InversionSettings,
    invert_update,
    relative_l1,
    retrained_update,
    simulated_update,
)
from fedsim.strategies.unstale import Unstale, converted, discount_factor, stale_update, uses_inversion

from .conftest import EVERY_NODE_TRAINS, read_metrics, stop_after_checkpoint, train_reply

pytestmark = pytest.mark.usefixtures("task_identity")


@pytest.fixture(autouse=True)
def one_thread():
    """The inversion's many tiny ops: one torch thread avoids spinning on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- the conversions -------------------------------------------------------------------------------------------

def test_the_conversions_by_hand():
    """w_t = (1, 2), w0 = (0.5, 1), w = (0.7, 0.5): Δ = (0.2, −0.5)."""
    current = {"w": torch.tensor([1.0, 2.0]), "steps": torch.tensor([7])}
    stale = {"w": torch.tensor([0.5, 1.0]), "steps": torch.tensor([3])}
    update = stale_update({"w": torch.tensor([0.7, 0.5]), "steps": torch.tensor([9])}, stale)
    assert list(update) == ["w"]  # integer entries are never converted
    torch.testing.assert_close(update["w"], torch.tensor([0.2, -0.5], dtype=torch.float64))
    direct = converted("direct", current, stale, update, staleness=40)
    torch.testing.assert_close(direct["w"], torch.tensor([1.2, 1.5], dtype=torch.float64))
    assert discount_factor(40, 20.0) == 0.25
    discounted = converted("discount", current, stale, update, staleness=40, half_life=20.0)
    torch.testing.assert_close(discounted["w"], torch.tensor([1.05, 1.875], dtype=torch.float64))
    # w_t + Δ − 4·Δ⊙Δ⊙(w_t − w0) = (1.2 − 4·0.04·0.5, 1.5 − 4·0.25·1)
    compensated = converted("dcasgd", current, stale, update, staleness=40, dcasgd_lambda=4.0)
    torch.testing.assert_close(compensated["w"], torch.tensor([1.12, 0.5], dtype=torch.float64))


# --- gradient inversion -----------------------------------------------------------------------------------------

def _linear_client() -> tuple[nn.Module, dict, torch.Tensor, torch.Tensor]:
    torch.manual_seed(3)
    model = nn.Linear(4, 3)
    start = {name: value.detach().clone() for name, value in model.named_parameters()}
    x = torch.rand(6, 4)
    labels = torch.nn.functional.one_hot(torch.tensor([0, 0, 1, 2, 2, 2]), 3).float() * 60.0  # ≈ hard labels
    return model, start, x, labels


def test_simulated_steps_are_full_batch_gradient_descent():
    model, start, x, labels = _linear_client()
    update = simulated_update(model, start, x, labels, steps=2, lr=0.5, loss="cross_entropy")
    reference = nn.Linear(4, 3)
    reference.load_state_dict(start)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.5)
    for _ in range(2):
        optimizer.zero_grad()
        nn.functional.cross_entropy(reference(x), labels.argmax(1)).backward()
        optimizer.step()
    for name, value in reference.named_parameters():
        torch.testing.assert_close(update[name], value.detach() - start[name], rtol=1e-5, atol=1e-6)


def test_inversion_recovers_the_update_of_a_tiny_linear_model():
    """The fit matches Δ closely, and the update retrained from a drifted model is far closer to the client's true
    update from there than the stale Δ is; the reference's BCE label loss, fitting as closely, transfers worse."""
    model, start, x, labels = _linear_client()
    update = simulated_update(model, start, x, labels, steps=2, lr=0.5, loss="cross_entropy")
    drifted = {name: value + 0.2 * torch.randn(value.shape, generator=torch.Generator().manual_seed(1))
               for name, value in start.items()}
    true = simulated_update(model, drifted, x, labels, steps=2, lr=0.5, loss="cross_entropy")
    errors = {}
    for loss in ("cross_entropy", "bce"):
        settings = InversionSettings(steps=2, client_lr=0.5, images=16, iterations=200, loss=loss)
        inversion = invert_update(model, start, update, settings, [4], 3, torch.Generator().manual_seed(0))
        assert inversion.fit_error < 0.01
        assert inversion.inputs.shape == (16, 4) and 0.0 <= inversion.inputs.min() <= inversion.inputs.max() <= 1.0
        errors[loss] = relative_l1(retrained_update(model, drifted, inversion, settings), true)
    stale_error = relative_l1(update, true)
    assert stale_error > 0.15 and errors["cross_entropy"] < stale_error / 2
    assert errors["cross_entropy"] < 0.7 * errors["bce"]


def test_the_inversion_is_seeded():
    model, start, x, labels = _linear_client()
    update = simulated_update(model, start, x, labels, steps=1, lr=0.5, loss="bce")
    settings = InversionSettings(steps=1, client_lr=0.5, images=4, iterations=20, loss="bce")
    a, b = (invert_update(model, start, update, settings, [4], 3, torch.Generator().manual_seed(5)) for _ in "ab")
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)


# --- the server -------------------------------------------------------------------------------------------------

class PartitionGrid:
    """A Grid of nodes 10 + p holding partition p; it only lists nodes (`KnowsPartitions`)."""

    def __init__(self, partitions: int) -> None:
        self.nodes = [10 + p for p in range(partitions)]

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def partition_of(self, node_id: int) -> int:
        return node_id - 10


def _strategy(**kwargs) -> Unstale:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    return Unstale(model=model, input_shape=[4], **{**EVERY_NODE_TRAINS, **kwargs})


def _arrays(value: float) -> ArrayRecord:
    return ArrayRecord({"weight": torch.full((3, 4), value), "bias": torch.full((3,), value)})


def _sent(messages: list[Message]) -> dict[int, float]:
    return {m.metadata.dst_node_id: float(m.content[ARRAYS_RECORD]["bias"].numpy()[0]) for m in messages}


def test_a_stale_client_gets_the_model_of_delay_rounds_ago():
    strategy = _strategy(delay=2, stale_clients=[1], conversion="direct")
    grid = PartitionGrid(3)
    sent = {r: _sent(list(strategy.configure_train(r, _arrays(float(r)), ConfigRecord(), grid))) for r in range(1, 6)}
    # round r's global model holds the value r; partition 1 (node 11) trains from round max(1, r − 2)'s
    assert [sent[r][11] for r in range(1, 6)] == [1.0, 1.0, 1.0, 2.0, 3.0]
    assert all(sent[r][10] == sent[r][12] == float(r) for r in sent)
    assert sorted(strategy.history) == [3, 4, 5]  # the last delay + 1 models only
    none = _strategy(delay=2, stale_clients=[1], conversion="none")
    assert [_sent(list(none.configure_train(r, _arrays(float(r)), ConfigRecord(), grid)))[11]
            for r in range(1, 5)] == [1.0, 2.0, 3.0, 4.0]


def test_a_stale_reply_is_converted_before_the_weighted_average():
    """Round 3, delay 2: node 11 trained from round 1's model (0.0) to 0.5, so Δ = 0.5 and, directly applied on
    w_t = 1.0, ŵ = 1.5; the fresh node 10 sent 3.0 with twice the rows: (2·3 + 1.5)/3 = 2.5."""
    strategy = _strategy(delay=2, stale_clients=[1], conversion="direct")
    grid = PartitionGrid(2)
    for r, value in ((1, 0.0), (2, 0.5), (3, 1.0)):
        list(strategy.configure_train(r, _arrays(value), ConfigRecord(), grid))
    replies = [train_reply(10, {k: v.numpy() for k, v in _arrays(3.0).to_torch_state_dict().items()}, 20),
               train_reply(11, {k: v.numpy() for k, v in _arrays(0.5).to_torch_state_dict().items()}, 10)]
    aggregated, _ = strategy.aggregate_train(3, replies)
    assert aggregated is not None
    np.testing.assert_allclose(aggregated["bias"].numpy(), 2.5, rtol=1e-6)
    assert strategy.round_scalars["stale_replies"] == 1 and strategy.round_scalars["staleness"] == 2


def test_the_switch_rules():
    assert uses_inversion("drift", fit_error=0.1, drift=0.5, residual=9.0, change=1.0)
    assert not uses_inversion("drift", fit_error=0.5, drift=0.1, residual=0.0, change=1.0)
    assert uses_inversion("estimate", fit_error=0.9, drift=0.0, residual=1.0, change=2.0)
    assert not uses_inversion("estimate", fit_error=0.0, drift=9.0, residual=2.0, change=1.0)
    assert uses_inversion("never", 9.0, 0.0, 9.0, 0.0) and uses_inversion("oracle", 9.0, 0.0, 9.0, 0.0)


def _stale_round(strategy: Unstale, drift: float) -> dict[str, float]:
    """One round whose stale node 11 trained from w0 (round 1) while the model drifted by `drift`."""
    grid = PartitionGrid(2)
    torch.manual_seed(4)
    w0 = {name: value.detach().clone() for name, value in nn.Linear(4, 3).named_parameters()}
    x, labels = torch.rand(6, 4), torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 2, 2, 2]), 3).float() * 60
    update = simulated_update(nn.Linear(4, 3), w0, x, labels, steps=1, lr=0.5, loss="cross_entropy")
    w_t = {name: value + drift for name, value in w0.items()}
    list(strategy.configure_train(1, ArrayRecord(w0), ConfigRecord(), grid))
    list(strategy.configure_train(2, ArrayRecord(w_t), ConfigRecord(), grid))
    trained = {name: (w0[name] + update[name]).numpy() for name in w0}
    replies = [train_reply(10, {k: v.numpy() for k, v in w_t.items()}, 6), train_reply(11, trained, 6)]
    strategy.aggregate_train(2, replies)
    return strategy.round_scalars


def test_the_drift_switch_keeps_inversion_while_the_model_moved_and_stops_it_for_good_when_not():
    settings = {"delay": 1, "stale_clients": [1], "lr": 0.5, "gi_images": 8, "gi_iterations": 150, "gi_lr": 0.1,
                "local_epochs": 1}
    moved = _stale_round(_strategy(**settings), drift=0.5)
    assert moved["gi_used"] == 1 and moved["gi_switched"] == 0 and moved["gi_fit_error"] < moved["gi_drift"]
    still = _strategy(**settings)
    barely = _stale_round(still, drift=1e-6)
    assert barely["gi_used"] == 0 and barely["gi_switched"] == 1 and barely["gi_fit_error"] >= barely["gi_drift"]
    assert still.switched_round == 2 and not still.gi_active


# --- runs on digits ---------------------------------------------------------------------------------------------

RUN = ("strategy=unstale", "num_clients=4", "num_rounds=4", "client.local_epochs=2", "client.batch_size=1000",
       "client.lr=0.5",
       "model=mlp", "model.hidden=[32]", "strategy.stale_clients=[0,1]", "strategy.delay=2",
       "strategy.conversion=inversion", "strategy.gi_iterations=50", "strategy.gi_images=32",
       "device=cpu")


def test_a_digits_run_with_inversion_records_its_conversions(run_quietly):
    summary, run_dir = run_quietly(*RUN)
    rows = [row for row in read_metrics(run_dir) if int(row["round"]) > 0]
    assert [float(row["stale_replies"]) for row in rows] == [2.0] * 4
    assert [float(row["staleness"]) for row in rows] == [0.0, 1.0, 2.0, 2.0]
    inverted = [row for row in rows if row.get("gi_fit_error")]
    assert inverted and all(math.isfinite(float(row["gi_fit_error"])) for row in inverted)
    assert float(rows[0]["gi_used"]) == 0.0  # round 1: the stale clients' w0 is w_t, nothing to convert
    assert summary["final_accuracy"] > 0.3


def test_the_oracle_switch_asks_the_stale_clients_for_their_unstale_update(run_quietly):
    _, run_dir = run_quietly(*RUN, "num_rounds=3", "strategy.switch=oracle", "strategy.gi_iterations=20")
    rows = [row for row in read_metrics(run_dir) if int(row["round"]) > 1]
    measured = [row for row in rows if row.get("oracle_inversion_error")]
    assert measured, "no round compared GI with the clients' true unstale update"
    for row in measured:
        assert all(float(row[f"oracle_{kind}_error"]) >= 0 for kind in ("inversion", "discount", "dcasgd"))
        assert float(row["oracle_direct_error"]) > 0  # the stale update is not the unstale one


def test_a_resumed_run_equals_the_run_left_alone(tmp_path, monkeypatch):
    from fedsim.config import compose_experiment
    from fedsim.run import run_experiment

    overrides = ["progress=false", *RUN, "num_rounds=3", "strategy.gi_iterations=10"]
    run_experiment(compose_experiment(overrides), tmp_path / "alone", show_progress=False)
    stop_after_checkpoint(monkeypatch, overrides, tmp_path / "stopped", server_round=2)
    run_experiment(compose_experiment(overrides), tmp_path / "stopped", show_progress=False, resume=True)
    alone = torch.load(tmp_path / "alone" / "model.pt", weights_only=True)
    resumed = torch.load(tmp_path / "stopped" / "model.pt", weights_only=True)
    assert all(torch.equal(alone[name], resumed[name]) for name in alone if name != "__fedsim__")
