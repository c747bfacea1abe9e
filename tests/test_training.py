"""The client update against hand computations: SGD with and without the FedProx proximal term, and the local
objective hook both training paths share."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsim.build import train_settings
from fedsim.data.tensors import ArrayDataset
from fedsim.models import LogisticRegression
from fedsim.protocol.experiment import experiment_record
from fedsim.training import ProximalTerm, TrainSettings, client_seed, evaluate, local_objectives, train_local


def _softmax_ce_grad(weight: np.ndarray, bias: np.ndarray, x: np.ndarray,
                     y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gradient of mean cross-entropy of softmax(x W^T + b), written out by hand."""
    logits = x @ weight.T + bias
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    delta = probs.copy()
    delta[np.arange(len(y)), y] -= 1.0
    return delta.T @ x / len(y), delta.mean(0)


def _problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(8, 5)).astype(np.float32)
    y = rng.integers(0, 3, size=8)
    model = LogisticRegression([5], 3)
    with torch.no_grad():
        model.linear.weight.copy_(torch.from_numpy(rng.normal(size=(3, 5)).astype(np.float32)))
        model.linear.bias.copy_(torch.from_numpy(rng.normal(size=3).astype(np.float32)))
    return model, ArrayDataset(torch.from_numpy(x), torch.from_numpy(y)), x.astype(np.float64), y


def _hand_sgd(weight, bias, x, y, steps, lr, momentum, weight_decay, mu):
    """`steps` full-batch steps of PyTorch-style SGD on CE + mu/2||w - w0||^2 (decay added before momentum)."""
    anchor = [weight.copy(), bias.copy()]
    params = [weight.copy(), bias.copy()]
    buffers = [None, None]
    for _ in range(steps):
        grads = list(_softmax_ce_grad(params[0], params[1], x, y))
        for i in range(2):
            grads[i] = grads[i] + weight_decay * params[i] + mu * (params[i] - anchor[i])
            buffers[i] = grads[i] if buffers[i] is None else momentum * buffers[i] + grads[i]
            params[i] = params[i] - lr * buffers[i]
    return params


@pytest.mark.parametrize(
    "steps, momentum, weight_decay, mu",
    [(1, 0.0, 0.0, 0.0), (1, 0.0, 0.0, 0.7), (2, 0.0, 0.0, 0.0), (2, 0.0, 0.0, 0.7), (3, 0.9, 0.01, 0.5)],
)
def test_sgd_steps_match_hand_computation(steps, momentum, weight_decay, mu):
    model, data, x, y = _problem()
    weight0 = model.linear.weight.detach().double().numpy().copy()
    bias0 = model.linear.bias.detach().double().numpy().copy()
    settings = TrainSettings(epochs=steps, batch_size=len(data), lr=0.3, momentum=momentum, weight_decay=weight_decay,
                             proximal_mu=mu)
    result = train_local(model, data, settings, torch.Generator().manual_seed(0), torch.device("cpu"))
    expected_w, expected_b = _hand_sgd(weight0, bias0, x, y, steps, 0.3, momentum, weight_decay, mu)
    np.testing.assert_allclose(model.linear.weight.detach().numpy(), expected_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.linear.bias.detach().numpy(), expected_b, rtol=1e-5, atol=1e-6)
    assert result.steps == steps and result.num_examples == len(data)


def test_proximal_term_pulls_towards_the_received_model():
    """Same data and steps: a large mu ends closer to the starting (global) weights than mu = 0."""
    distances = []
    for mu in (0.0, 5.0):
        model, data, _, _ = _problem()
        start = model.linear.weight.detach().clone()
        settings = TrainSettings(epochs=5, batch_size=len(data), lr=0.1, proximal_mu=mu)
        train_local(model, data, settings, torch.Generator().manual_seed(0), torch.device("cpu"))
        distances.append(float(torch.norm(model.linear.weight.detach() - start)))
    assert distances[1] < 0.7 * distances[0]


def test_proximal_term_is_half_mu_times_the_squared_distance_to_the_anchor():
    params, anchor = ([torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])],
                      [torch.tensor([0.0, 0.0]), torch.tensor([[1.0]])])
    assert float(ProximalTerm(0.5)(params, anchor)) == pytest.approx(0.25 * (1 + 4 + 4))
    assert local_objectives(TrainSettings(proximal_mu=0.5)) == (ProximalTerm(0.5),)
    assert local_objectives(TrainSettings(proximal_mu=0.0)) == ()


def test_train_local_minimises_the_objective_terms_it_is_given():
    """Explicit terms replace those the settings imply: the proximal term given by hand trains bit for bit as
    `proximal_mu` does, and any `LocalObjective` joins the loss (an L2 pull to zero acts as weight decay)."""
    def trained(settings: TrainSettings, objectives=None) -> torch.Tensor:
        model, data, _, _ = _problem()
        train_local(model, data, settings, torch.Generator().manual_seed(0), torch.device("cpu"), objectives=objectives)
        return model.linear.weight.detach()

    plain = TrainSettings(epochs=3, batch_size=3, lr=0.1)
    proximal = TrainSettings(epochs=3, batch_size=3, lr=0.1, proximal_mu=0.7)
    assert torch.equal(trained(plain, (ProximalTerm(0.7),)), trained(proximal))
    assert torch.equal(trained(proximal, ()), trained(plain))

    def l2(params, anchor):
        return 0.5 * 0.05 * sum(torch.sum(p**2) for p in params)

    decayed = trained(TrainSettings(epochs=3, batch_size=3, lr=0.1, weight_decay=0.05))
    torch.testing.assert_close(trained(plain, (l2,)), decayed, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(decayed, trained(plain))


def test_minibatches_visit_every_sample_once_per_epoch():
    model, data, _, _ = _problem()
    result = train_local(model, data, TrainSettings(epochs=2, batch_size=3), torch.Generator().manual_seed(1),
                         torch.device("cpu"))
    assert result.steps == 2 * 3  # 8 samples in batches of 3: 3 + 3 + 2


def test_evaluate_counts_accuracy_and_loss():
    model = LogisticRegression([2], 2)
    with torch.no_grad():
        model.linear.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        model.linear.bias.zero_()
    x = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([0, 1, 1, 1])  # the third sample is predicted 0
    result = evaluate(model, ArrayDataset(x, y), torch.device("cpu"), batch_size=3)
    assert result.accuracy == pytest.approx(0.75)
    expected_loss = (3 * np.log(1 + np.exp(-2.0)) + np.log(1 + np.exp(2.0))) / 4
    assert result.loss == pytest.approx(expected_loss, rel=1e-6)


def test_strategy_keys_override_client_config():
    experiment = {"client": {"local_epochs": 2, "batch_size": 16, "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0,
                             "proximal_mu": 0.0}}
    record = experiment_record(experiment)
    assert train_settings(experiment, record).proximal_mu == 0.0
    record["proximal-mu"] = 0.25
    record["local-epochs"] = 1
    settings = train_settings(experiment, record)
    assert settings.proximal_mu == 0.25 and settings.epochs == 1 and settings.lr == 0.1


def test_client_seed_depends_on_seed_round_and_partition():
    seeds = {client_seed(s, r, p) for s in (0, 1) for r in (1, 2) for p in (0, 1)}
    assert len(seeds) == 8
    assert client_seed(3, 4, 5) == client_seed(3, 4, 5)


def test_image_models_train_channels_last_with_the_plain_loops_result():
    """train_local runs image models in channels-last memory format for speed: the weights must be those of a
    plain NCHW loop over the same minibatches (float rounding only), handed back in the usual layout."""
    from fedsim.models import CNN

    torch.manual_seed(3)
    model = CNN([1, 12, 12], 4, channels=(4, 8), hidden=16)
    reference = CNN([1, 12, 12], 4, channels=(4, 8), hidden=16)
    reference.load_state_dict(model.state_dict())
    data = ArrayDataset(torch.randn(40, 1, 12, 12), torch.randint(0, 4, (40,)))
    settings = TrainSettings(epochs=2, batch_size=16, lr=0.1, momentum=0.9)
    train_local(model, data, settings, torch.Generator().manual_seed(7), torch.device("cpu"))

    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    order_generator = torch.Generator().manual_seed(7)
    for _ in range(2):
        order = torch.randperm(40, generator=order_generator)
        for start in range(0, 40, 16):
            batch = order[start : start + 16]
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(reference(data.x[batch]), data.y[batch]).backward()
            optimizer.step()
    for (name, trained), expected in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
        assert trained.is_contiguous(), name
        torch.testing.assert_close(trained, expected, rtol=1e-5, atol=1e-6)
