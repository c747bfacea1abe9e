"""FedCollab (`fedsim.strategies.fedcollab`): the batched discriminators against the reference's MLP and SGD step,
the distances and coalitions of a label-shift federation, FedAvg inside each coalition, and the label-cluster
partitioner its reproduction uses."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord

from fedsim.config import compose_experiment, resolve_auto_values, validate
from fedsim.data.federation import federation_for
from fedsim.engines.inprocess import InProcessGrid
from fedsim.errors import ConfigError
from fedsim.protocol.experiment import experiment_record
from fedsim.server import build_strategy
from fedsim.strategies.fedcollab import PARAMETERS, _initial_discriminators, client_stage

from .conftest import EVERY_NODE_TRAINS, set_task_identity, train_reply


class ReferenceDiscriminator(torch.nn.Module):
    """The reference's "C" estimator written out: flatten(x)·W1 + 2·(ν·onehot(y)·V + c) → ReLU → linear."""

    def __init__(self, features: int, classes: int, hidden: int) -> None:
        super().__init__()
        self.feature, self.label = torch.nn.Linear(features, hidden), torch.nn.Linear(classes, hidden)
        self.out, self.classes = torch.nn.Linear(hidden, 1), classes

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        nu = self.classes / math.sqrt(self.classes - 1)
        label = self.label(nu * torch.nn.functional.one_hot(y, self.classes).float())
        return self.out(torch.relu(self.feature(x) + 2 * label)).squeeze(-1)

    def load(self, stacked: dict[str, torch.Tensor], pair: int) -> None:
        with torch.no_grad():
            for layer, weight, bias in ((self.feature, "w1", "b1"), (self.label, "v", "c")):
                layer.weight.copy_(stacked[weight][pair])
                layer.bias.copy_(stacked[bias][pair])
            self.out.weight.copy_(stacked["w2"][pair].unsqueeze(0))
            self.out.bias.copy_(stacked["b2"][pair].view(1))


@dataclass
class FakeClient:
    """What the ClientApp offers a stage function (`fedsim.protocol.stages.StageRound`)."""

    x: torch.Tensor
    y: torch.Tensor
    config: ConfigRecord
    received: ArrayRecord
    partition_id: int = 0
    num_classes: int = 3
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def rows(self, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        return self.x, self.y


def test_one_stage_step_is_the_reference_discriminators_sgd_step_on_each_pair_alone():
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(12, 5, generator=generator), torch.randint(0, 3, (12,), generator=generator)
    stacked = _initial_discriminators((5, 3, 4), 2, seed=3)
    stacked = {name: value + 0.1 * torch.randn(value.shape, generator=generator) for name, value in stacked.items()}
    config = ConfigRecord({"phase": "step", "evaluate": True, "sides": [0, 1], "estimator-rows": 6, "lr": 0.5,
                           "batch-size": 6, "stage-round": 1, "divergence": "C", "seed": 0})
    received = ArrayRecord({name: Array(stacked[name].numpy()) for name in PARAMETERS})
    reply = client_stage(FakeClient(x, y, config, received))
    # the estimator split: the seeded permutation's first 6 rows train (all of them each step), the rest validate
    order = torch.randperm(12, generator=torch.Generator().manual_seed(
        int(np.random.SeedSequence([0, 0, 31337]).generate_state(1)[0])))
    train, valid = order[:6], order[6:]
    for pair, side in enumerate((0.0, 1.0)):
        model = ReferenceDiscriminator(5, 3, 4)
        model.load(stacked, pair)
        with torch.no_grad():
            accuracy = ((model(x[valid], y[valid]) >= 0).float() == side).float().mean()
        assert reply["metrics"]["accuracy"][pair] == pytest.approx(float(accuracy))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        logits = model(x[train], y[train])
        torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.full_like(logits, side)).backward()
        optimizer.step()
        stepped = reply["arrays"]
        np.testing.assert_allclose(stepped["w1"].numpy()[pair], model.feature.weight.detach().numpy(), atol=1e-6)
        np.testing.assert_allclose(stepped["v"].numpy()[pair], model.label.weight.detach().numpy(), atol=1e-6)
        np.testing.assert_allclose(stepped["c"].numpy()[pair], model.label.bias.detach().numpy(), atol=1e-6)
        np.testing.assert_allclose(stepped["w2"].numpy()[pair], model.out.weight.detach().numpy()[0], atol=1e-6)
        np.testing.assert_allclose(stepped["b2"].numpy()[pair], model.out.bias.detach().numpy()[0], atol=1e-6)


def _prepared(*overrides: str):  # type: ignore[no-untyped-def]
    set_task_identity()
    experiment = resolve_auto_values(compose_experiment(["strategy=fedcollab", "partition=label_clusters",
                                                         "client.val_fraction=0.2", *overrides]))
    validate(experiment)
    strategy = build_strategy(experiment, federation_for(experiment))
    grid = InProcessGrid(__import__("fedsim.client", fromlist=["app"]).app, int(experiment["num_clients"]))
    found = strategy.prepare(grid, experiment_record(experiment), timeout=600)
    return strategy, found


def test_distances_tell_label_disjoint_clients_from_label_sharing_ones_and_the_coalitions_follow():
    # one client per cluster: clients 0/1 share labels 1-3, clients 2/3 labels 6-8; the two halves share none
    _, found = _prepared("num_clients=4", "strategy.distance_rounds=60", "strategy.distance_eval_every=5",
                         "strategy.distance_patience=4", "strategy.solver_restarts=10")
    d = np.array(found["distances"])
    assert min(d[0, 2], d[0, 3], d[1, 2], d[1, 3]) > 0.8  # no shared label: the discriminator tells them apart
    assert d[0, 1] < min(d[0, 2], d[0, 3]) and d[2, 3] < min(d[0, 2], d[1, 2])
    assert np.allclose(d, d.T) and np.all(np.diag(d) == 0)
    for coalition in found["coalitions"]:
        halves = {client // 2 for client in coalition}
        assert len(halves) == 1, f"coalition {coalition} mixes clients that share no label"
    assert len(found["sizes"]) == 4 and all(size > 0 for size in found["sizes"])


def test_alone_and_together_need_no_distances():
    _, alone = _prepared("num_clients=4", "strategy.coalitions=alone")
    _, together = _prepared("num_clients=4", "strategy.coalitions=together")
    assert alone["coalitions"] == [[0], [1], [2], [3]] and together["coalitions"] == [[0, 1, 2, 3]]


def test_each_coalition_averages_its_own_members_and_its_nodes_get_its_model(task_identity):
    experiment = compose_experiment(["strategy=fedcollab", "num_clients=4"])
    strategy = build_strategy(experiment | {"strategy": {**experiment["strategy"], **EVERY_NODE_TRAINS}})
    strategy.coalition_of, strategy.coalition_sizes = {1: 0, 2: 0, 3: 1, 4: 1}, {0: 30, 1: 100}
    start = ArrayRecord({"w": Array(np.zeros(2, dtype=np.float32))})
    strategy.coalition_models = {0: start, 1: start}
    replies = [train_reply(1, {"w": np.array([1.0, 0.0], np.float32)}, 10),
               train_reply(2, {"w": np.array([0.0, 1.0], np.float32)}, 20),
               train_reply(3, {"w": np.array([4.0, 4.0], np.float32)}, 50),
               train_reply(4, {"w": np.array([8.0, 0.0], np.float32)}, 50)]
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(strategy.model_for(1, start)["w"].numpy(), [1 / 3, 2 / 3], rtol=1e-6)
    np.testing.assert_allclose(strategy.model_for(4, start)["w"].numpy(), [6.0, 2.0])
    np.testing.assert_allclose(arrays["w"].numpy(), [6.0, 2.0])  # the largest coalition's model is the global one
    assert strategy.client_weights == pytest.approx({1: 1 / 3, 2: 2 / 3, 3: 0.5, 4: 0.5})


def test_label_clusters_follow_the_reference_matrix_and_subsampling():
    experiment = compose_experiment(["partition=label_clusters", "num_clients=8", "partition.subsample_decay=1.0"])
    federation = federation_for(experiment)
    labels = federation.data.train_arrays.y.numpy()
    counts = np.array([np.bincount(labels[rows], minlength=10) for rows in federation.client_indices])
    assert set(np.flatnonzero(counts[0])) == {0, 1, 2, 3} and set(np.flatnonzero(counts[2])) == {1, 2, 3, 4}
    assert set(np.flatnonzero(counts[4])) == {5, 6, 7, 8} and set(np.flatnonzero(counts[6])) == {6, 7, 8, 9}
    total = np.bincount(labels, minlength=10)
    assert counts[0, 1] == pytest.approx(total[1] * 0.25, abs=1)  # 0.5 of label 1 for cluster 0, split over 2 clients
    assert counts[0, 0] == pytest.approx(total[0] * 0.125, abs=1)  # k = 0.25, over 2 clients
    assert counts[4].sum() == pytest.approx(counts[0].sum() * math.exp(-1), rel=0.15)  # the second half keeps e^-1
    with pytest.raises(ConfigError, match=r"^partition\.num_partitions=10"):
        validate(compose_experiment(["partition=label_clusters", "num_clients=10"]))
