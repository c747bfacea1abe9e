"""Every model of the `model` group builds from a data set's input shape and class count, and trains."""

from __future__ import annotations

import pytest
import torch

from fedsim.build import build_model
from fedsim.config import compose_experiment
from fedsim.data import load_data
from fedsim.models import CNN, MLP, LogisticRegression, ResNet


@pytest.mark.parametrize(
    "model, shape",
    [(LogisticRegression([60], 10), (4, 60)), (MLP([1, 8, 8], 10), (4, 1, 8, 8)),
     (CNN([1, 28, 28], 10), (4, 1, 28, 28)), (CNN([1, 8, 8], 10), (4, 1, 8, 8)),
     (ResNet([3, 32, 32], 10), (4, 3, 32, 32))],
)
def test_output_shape_and_gradients(model, shape):
    logits = model(torch.randn(shape))
    assert logits.shape == (shape[0], 10)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_fedavg_cnn_has_the_papers_layer_sizes():
    model = CNN([1, 28, 28], 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(1, 32, (5, 5)), (32, 64, (5, 5))]
    assert model.classifier[1].in_features == 64 * 7 * 7 and model.classifier[1].out_features == 512


def test_resnet_uses_group_norm_only():
    model = ResNet([3, 32, 32], 10)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.modules())


def test_models_take_input_shape_from_the_data():
    experiment = compose_experiment(["model=cnn"])
    data = load_data(experiment["dataset"], 0)
    model = build_model(experiment, data)
    assert model(data.test_arrays.x[:2]).shape == (2, 10)


def test_image_models_refuse_flat_inputs():
    with pytest.raises(ValueError, match="image inputs"):
        CNN([60], 10)
