"""Strategies against hand computations on fixed client replies."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

from fedsim.config import group_options
from fedsim.engines import InProcessGrid
from fedsim.models import LogisticRegression
from fedsim.strategies import FedAvg, FedDisco, FedLAW, FedProx, disco_weights, discrepancy
from fedsim.strategies.feddisco import HISTOGRAM_RECORD, HISTOGRAM_REQUEST_KEY, histogram_reply
from fedsim.strategies.stragglers import plan_stragglers

from .conftest import EVERY_NODE_TRAINS, train_reply

pytestmark = pytest.mark.usefixtures("task_identity")


def _grid(num_nodes: int) -> InProcessGrid:
    return InProcessGrid(ClientApp(), num_nodes)


def _common(**kwargs):
    return {**EVERY_NODE_TRAINS, **kwargs}


# --- stragglers ---------------------------------------------------------------------------------------------


def test_straggler_plan_counts_and_epoch_range():
    plan = plan_stragglers(10, 0.9, local_epochs=20, seed=0, server_round=3)
    assert len(plan.active) == 1 and len(plan.stragglers) == 9
    assert all(1 <= e <= 19 for e in plan.epochs.values())
    assert plan == plan_stragglers(10, 0.9, local_epochs=20, seed=0, server_round=3)
    assert plan != plan_stragglers(10, 0.9, local_epochs=20, seed=0, server_round=4)
    epochs = [e for r in range(200) for e in plan_stragglers(10, 0.5, 3, 0, r).epochs.values()]
    assert set(epochs) == {1, 2}  # randint(1, E): uniform on 1..E-1, never E


def test_fedavg_drops_and_fedprox_shortens_the_same_stragglers():
    grid = _grid(10)
    arrays = ArrayRecord([np.zeros(2)])
    import random

    random.seed(0)
    fedavg = FedAvg(stragglers_fraction=0.5, local_epochs=5, seed=1, **_common())
    avg = list(fedavg.configure_train(2, arrays, ConfigRecord(), grid))
    random.seed(0)
    prox_strategy = FedProx(proximal_mu=1.0, stragglers_fraction=0.5, local_epochs=5, seed=1, **_common())
    shared_config = ConfigRecord()
    prox = list(prox_strategy.configure_train(2, arrays, shared_config, grid))
    assert len(avg) == 5 and len(prox) == 10 and prox_strategy.round_scalars["stragglers"] == 5
    active = {m.metadata.dst_node_id for m in avg}
    for message in prox:
        config = message.content["config"]
        assert config["proximal-mu"] == 1.0
        if message.metadata.dst_node_id in active:
            assert "local-epochs" not in config
        else:
            assert 1 <= config["local-epochs"] <= 4
    assert "local-epochs" not in shared_config  # per-node copies, the shared config is untouched


def test_no_stragglers_is_flowers_fedavg():
    grid = _grid(4)
    replies = [train_reply(node, {"w": np.full(3, float(node), dtype=np.float32)}, n)
               for node, n in zip(grid.get_node_ids(), (1, 2, 3, 4), strict=True)]
    ours, _ = FedAvg(**_common()).aggregate_train(1, replies)
    flowers, _ = FlowerFedAvg(**_common()).aggregate_train(1, replies)
    np.testing.assert_array_equal(ours["w"].numpy(), flowers["w"].numpy())
    nodes = list(grid.get_node_ids())
    expected = sum(n * node for n, node in zip((1, 2, 3, 4), nodes, strict=True)) / 10
    np.testing.assert_allclose(ours["w"].numpy(), np.full(3, expected), rtol=1e-6)


# --- FedDisco -----------------------------------------------------------------------------------------------


def test_discrepancy_by_hand():
    uniform = [0.25] * 4
    assert discrepancy([3, 1, 0, 0], uniform, "kl") == pytest.approx(0.75 * math.log(3) + 0.25 * math.log(1))
    assert discrepancy([3, 1, 0, 0], uniform, "l2") == pytest.approx(math.sqrt(0.5**2 + 0 + 0.25**2 + 0.25**2))
    assert discrepancy([3, 1, 0, 0], uniform, "l1") == pytest.approx(0.5 + 0 + 0.25 + 0.25)
    assert discrepancy([5, 5, 5, 5], uniform, "kl") == pytest.approx(0.0)


def test_disco_weights_by_hand():
    # n = [0.1, 0.3, 0.6]; KL discrepancies normalised over the round: [0.2, 0.2, 0.6]
    # p~ = n - 0.5 d + 0.1 = [0.1, 0.3, 0.4] -> p = [0.125, 0.375, 0.5]
    np.testing.assert_allclose(disco_weights([10, 30, 60], [1.0, 1.0, 3.0], a=0.5, b=0.1), [0.125, 0.375, 0.5])
    # l2 is not normalised: p~ = [0.1 - 0.5 + 0.1, 0.3 - 0.1 + 0.1, 0.6 - 0 + 0.1] -> ReLU -> [0, 0.3, 0.7]
    np.testing.assert_allclose(disco_weights([10, 30, 60], [1.0, 0.2, 0.0], a=0.5, b=0.1, measure="l2"),
                               [0.0, 0.3, 0.7])
    # every term <= 0: fall back to FedAvg weights (the reference crashes here)
    np.testing.assert_allclose(disco_weights([10, 30, 60], [1.0, 1.0, 1.0], a=50.0, b=0.0), [0.1, 0.3, 0.6])
    # all-zero KL discrepancies: d = 0, so p ∝ n + b
    np.testing.assert_allclose(disco_weights([1, 3], [0.0, 0.0], a=0.5, b=0.1), np.array([0.35, 0.85]) / 1.2)


def test_feddisco_aggregates_with_disco_weights_and_asks_once():
    grid = _grid(3)
    nodes = list(grid.get_node_ids())
    strategy = FedDisco(**_common())
    first = list(strategy.configure_train(1, ArrayRecord([np.zeros(1)]), ConfigRecord(), grid))
    assert all(m.content["config"][HISTOGRAM_REQUEST_KEY] is True for m in first)
    histograms = [[6, 0], [3, 3], [0, 6]]  # uniform target [0.5, 0.5]
    replies = [
        train_reply(node, {"w": np.array([float(k)], dtype=np.float32)}, 10 * (k + 1),
                    records={HISTOGRAM_RECORD: histogram_reply(h)})
        for k, (node, h) in enumerate(zip(nodes, histograms, strict=True))
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    n = np.array([10, 20, 30]) / 60
    d = np.array([math.log(2), 0.0, math.log(2)])
    d = d / d.sum()
    p = np.maximum(n - 0.5 * d + 0.1, 0)
    p = p / p.sum()
    np.testing.assert_allclose(arrays["w"].numpy(), [p @ np.array([0.0, 1.0, 2.0])], rtol=1e-6)
    assert strategy.client_weights == pytest.approx(dict(zip(nodes, p, strict=True)))
    assert metrics["train_loss"] == pytest.approx(1.0)
    second = list(strategy.configure_train(2, ArrayRecord([np.zeros(1)]), ConfigRecord(), grid))
    assert all(HISTOGRAM_REQUEST_KEY not in m.content["config"] for m in second)  # histograms are sent once


def test_feddisco_target_from_clients():
    strategy = FedDisco(target="clients", **_common())
    strategy.histograms = {1: np.array([8.0, 2.0]), 2: np.array([2.0, 8.0]), 3: np.array([5.0, 5.0])}
    np.testing.assert_allclose(strategy.target_distribution(2), [0.5, 0.5])
    strategy.histograms[4] = np.array([10.0, 0.0])
    np.testing.assert_allclose(strategy.target_distribution(2), [25 / 40, 15 / 40])


# --- FedLAW -------------------------------------------------------------------------------------------------


def _logreg_replies(grid, weights, sizes):
    return [train_reply(node, {"linear.weight": w.astype(np.float32), "linear.bias": np.zeros(2, dtype=np.float32)}, n)
            for node, w, n in zip(grid.get_node_ids(), weights, sizes, strict=True)]


def test_fedlaw_with_zero_server_epochs_is_fedavg_bit_for_bit():
    grid = _grid(3)
    rng = np.random.default_rng(0)
    replies = _logreg_replies(grid, [rng.normal(size=(2, 4)) for _ in range(3)], (7, 11, 13))
    model = LogisticRegression([4], 2)
    proxy = (torch.randn(20, 4), torch.randint(0, 2, (20,)))
    fedlaw, _ = FedLAW(model=model, proxy_data=proxy, server_epochs=0, **_common()).aggregate_train(1, replies)
    fedavg, _ = FlowerFedAvg(**_common()).aggregate_train(1, replies)
    for name in ("linear.weight", "linear.bias"):
        assert np.array_equal(fedlaw[name].numpy(), fedavg[name].numpy())


def test_fedlaw_learns_to_shrink_overconfident_clients():
    """Clients that overfit send weights 6x too large; on noisy proxy labels the learned gamma shrinks them."""
    grid = _grid(3)
    generator = torch.Generator().manual_seed(0)
    true_w = torch.randn(2, 4, generator=generator)
    x = torch.randn(400, 4, generator=generator)
    y = (x @ true_w.T).argmax(1)
    flip = torch.rand(400, generator=generator) < 0.25
    y = torch.where(flip, 1 - y, y)  # 25% label noise: a confident model pays for it
    client_weights = [(6.0 * true_w + 0.3 * torch.randn(2, 4, generator=generator)).numpy() for _ in range(3)]
    replies = _logreg_replies(grid, client_weights, (10, 10, 10))
    strategy = FedLAW(model=LogisticRegression([4], 2), proxy_data=(x[:200], y[:200]), seed=0, **_common())
    arrays, _ = strategy.aggregate_train(1, replies)
    gamma = strategy.round_scalars["gamma"]
    assert gamma < 0.9
    lam = np.array([strategy.client_weights[node] for node in grid.get_node_ids()])
    assert lam.sum() == pytest.approx(1.0) and (lam > 0).all()
    expected = gamma * sum(lam_k * w for lam_k, w in zip(lam, client_weights, strict=True))
    np.testing.assert_allclose(arrays["linear.weight"].numpy(), expected, rtol=1e-5, atol=1e-6)

    def proxy_loss(weight: np.ndarray) -> float:
        logits = x[200:] @ torch.from_numpy(weight).T
        return float(torch.nn.functional.cross_entropy(logits, y[200:]))

    fedavg = np.mean(client_weights, axis=0)
    assert proxy_loss(arrays["linear.weight"].numpy()) < proxy_loss(fedavg)  # it also generalises better


def _reference_fedlaw(client_weights, sizes, x, y, epochs, lr):
    """The reference's `fedlaw_optimization` (server_funct 'exp', Adam, StepLR(20, 0.5) stepped each epoch), one
    full batch per epoch, written from `server_funct.py` independently of fedsim's implementation."""
    params = [torch.from_numpy(w).flatten() for w in client_weights]
    optimizees = torch.tensor([math.log(n / sum(sizes)) for n in sizes] + [0.0], requires_grad=True)
    optimizer = torch.optim.Adam([optimizees], lr=lr, betas=(0.5, 0.999))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=20, gamma=0.5)
    for _ in range(epochs):
        lam = torch.softmax(optimizees[:-1], 0)
        flat = sum(torch.exp(optimizees[-1]) * lam[i] * params[i] for i in range(len(params)))
        loss = torch.nn.functional.cross_entropy(x @ flat[:8].reshape(2, 4).T + flat[8:], y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    return float(torch.exp(optimizees[-1]).detach()), torch.softmax(optimizees[:-1], 0).detach().numpy()


@pytest.mark.parametrize("epochs", [20, 45])
def test_fedlaw_matches_the_reference_optimisation_with_its_step_schedule(epochs):
    """gamma and lambda equal the reference loop's; above 20 epochs its StepLR(20, 0.5) changes them."""
    grid = _grid(3)
    generator = torch.Generator().manual_seed(1)
    true_w = torch.randn(2, 4, generator=generator)
    x = torch.randn(100, 4, generator=generator)
    y = torch.where(torch.rand(100, generator=generator) < 0.25, 1 - (x @ true_w.T).argmax(1), (x @ true_w.T).argmax(1))
    client_weights = [(4.0 * true_w + 0.5 * torch.randn(2, 4, generator=generator)).numpy() for _ in range(3)]
    sizes = (10, 20, 30)
    replies = _logreg_replies(grid, client_weights, sizes)
    with_bias = [np.concatenate([w.ravel(), np.zeros(2, dtype=np.float32)]) for w in client_weights]
    strategy = FedLAW(model=LogisticRegression([4], 2), proxy_data=(x, y), server_epochs=epochs, batch_size=100,
                      dataset="digits", **_common())
    assert strategy.server_lr == 0.005  # the reference's on every data set but CIFAR-10
    strategy.aggregate_train(1, replies)
    lam = np.array([strategy.client_weights[node] for node in grid.get_node_ids()])
    gamma, reference_lam = _reference_fedlaw([w.reshape(-1) for w in with_bias], sizes, x, y, epochs, 0.005)
    assert strategy.round_scalars["gamma"] == pytest.approx(gamma, rel=1e-5)
    np.testing.assert_allclose(lam, reference_lam, rtol=1e-5)
    if epochs > 20:  # without the schedule the last 25 epochs would move gamma further
        unscheduled = FedLAW(model=LogisticRegression([4], 2), proxy_data=(x, y), server_epochs=epochs, batch_size=100,
                             dataset="digits", lr_step_factor=1.0, **_common())
        unscheduled.aggregate_train(1, replies)
        assert abs(unscheduled.round_scalars["gamma"] - gamma) > 1e-3


def test_fedlaw_server_lr_auto_is_the_references():
    from fedsim.config import compose_experiment
    from fedsim.strategies.fedlaw import reference_server_lr

    assert (reference_server_lr("cifar10"), reference_server_lr("digits"), reference_server_lr(None)) == (0.01, 0.005,
                                                                                                          0.005)
    strategy = compose_experiment(["strategy=fedlaw", "dataset=cifar10"])["strategy"]
    assert strategy["server_lr"] == "auto" and strategy["dataset"] == "cifar10"
    assert (strategy["lr_step_epochs"], strategy["lr_step_factor"]) == (20, 0.5)


def test_fedlaw_averages_buffers_with_fedavg_weights():
    grid = _grid(2)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    names = list(model.state_dict().keys())
    replies = []
    for node, scale, n in zip(grid.get_node_ids(), (1.0, 3.0), (1, 3), strict=True):
        arrays = {k: (v.float().numpy() * 0 + scale).astype(v.numpy().dtype) for k, v in model.state_dict().items()}
        replies.append(train_reply(node, arrays, n))
    strategy = FedLAW(model=model, proxy_data=(torch.randn(16, 3), torch.randint(0, 2, (16,))), server_epochs=2,
                      **_common())
    arrays, _ = strategy.aggregate_train(1, replies)
    assert list(arrays.keys()) == names
    np.testing.assert_allclose(arrays["1.running_mean"].numpy(), [2.5, 2.5])  # (1*1 + 3*3) / 4, no gamma
    assert arrays["1.num_batches_tracked"].numpy() == 2  # rounded FedAvg mean of 1 and 3 -> 2.5 -> 2 (banker's)


# --- the clients' optimiser under each strategy ----------------------------------------------------------------


# (momentum, weight decay, source) of the clients' SGD under each configured strategy: a new strategy says here what
# its paper's reference code runs.
CLIENT_OPTIMIZERS = {
    "fedavg": (0.9, 0.0, "fedsim default"),  # McMahan et al. use plain SGD; fedsim keeps its own default (README)
    "fedprox": (0.0, 0.0, "paper"),  # flearn/optimizer/pgd.py: plain SGD plus the proximal term
    "feddisco": (0.9, 1e-5, "paper"),  # algorithms/client.py: SGD momentum 0.9, weight decay args.reg = 1e-5
    "fedlaw": (0.9, 5e-4, "paper"),  # utils.init_optimizer: SGD momentum 0.9, weight decay 5e-4
    "qffl": (0.0, 0.0, "paper"),  # qffedavg.py: plain gradient descent
    "fedce": (0.9, 0.0, "fedsim default"),  # the reference trains with Adam, which fedsim's clients do not offer
    "fairfed": (0.9, 0.0, "fedsim default"),  # neither the paper nor declearn names a client optimiser
    "agnosticfair": (0.0, 0.0, "paper"),  # the reference's theta step: full-batch plain SGD, lr 0.1
    "fairequal": (0.9, 0.0, "paper"),  # run_2stages_exp_stream.py: SGD momentum 0.9
    "unstale": (0.0, 0.0, "paper"),  # update.py LocalUpdate: SGD momentum 0, no weight decay
    # asynchronous rules: FedAsync and FedBuff name local SGD steps; no reference code names momentum
    "fedasync": (0.9, 0.0, "fedsim default"),
    "fedbuff": (0.9, 0.0, "fedsim default"),
    # server-side rules that leave the clients' optimiser alone
    **{name: (0.9, 0.0, "fedsim default") for name in ("ida", "flag", "krum", "multikrum", "bulyan", "median",
                                                         "trimmedavg", "fedcollab")},
}


@pytest.mark.parametrize("strategy", group_options("strategy"))
def test_client_optimizer_is_the_papers_and_reaches_the_clients(strategy):
    from fedsim.build import client_optimizer, train_settings
    from fedsim.config import compose_experiment
    from fedsim.protocol.experiment import experiment_record

    momentum, weight_decay, source = CLIENT_OPTIMIZERS[strategy]
    experiment = compose_experiment([f"strategy={strategy}", "client.lr=0.05"])
    expected = {"name": "SGD", "lr": 0.05, "momentum": momentum, "weight_decay": weight_decay, "source": source}
    assert client_optimizer(experiment) == expected
    settings = train_settings(experiment, experiment_record(experiment))
    assert (settings.lr, settings.momentum, settings.weight_decay) == (0.05, momentum, weight_decay)


def test_client_optimizer_block_can_be_removed_or_changed():
    from fedsim.build import client_optimizer
    from fedsim.config import compose_experiment, validate
    from fedsim.errors import ConfigError

    removed = compose_experiment(["strategy=fedprox", "~strategy.client_optimizer", "client.momentum=0.5"])
    assert client_optimizer(removed)["momentum"] == 0.5 and client_optimizer(removed)["source"] == "fedsim default"
    changed = compose_experiment(["strategy=fedprox", "strategy.client_optimizer.momentum=0.3"])
    assert client_optimizer(changed)["momentum"] == 0.3
    qffl = compose_experiment(["strategy=qffl", "strategy.client_optimizer.momentum=0.3"])
    assert client_optimizer(qffl)["momentum"] == 0.0  # q-FFL sends momentum 0 every round whatever the config
    with pytest.raises(ConfigError, match="strategy.client_optimizer.momentum"):
        validate(compose_experiment(["strategy=fedprox", "strategy.client_optimizer.momentum=1.0"]))
