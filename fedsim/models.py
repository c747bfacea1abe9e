"""The models of the `model` config group. Each takes the data set's input shape and class count."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class LogisticRegression(nn.Module):
    """Multinomial logistic regression on the flattened input (FedProx's `mclr`)."""

    def __init__(self, input_shape: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(math.prod(input_shape), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


class MLP(nn.Module):
    """Fully connected ReLU network on the flattened input (the FedAvg paper's 2NN with hidden=[200, 200])."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (200, 200)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = math.prod(input_shape)
        for size in hidden:
            layers += [nn.Linear(width, int(size)), nn.ReLU()]
            width = int(size)
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


def _image_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ValueError(f"model needs image inputs (channels, height, width), got input shape {tuple(input_shape)}")
    channels, height, width = (int(v) for v in input_shape)
    return channels, height, width


class CNN(nn.Module):
    """The FedAvg paper's CNN: two 5x5 conv layers with 2x2 max-pooling, a dense layer, a linear classifier.

    "Same" padding (2, the default) keeps it usable on small images (8x8 digits) as well as 28x28 and 32x32 ones;
    `padding=0` is the unpadded variant (W1 of bench/sim_throughput.py: channels [16, 32], hidden 128).
    """

    def __init__(
        self, input_shape: Sequence[int], num_classes: int, channels: Sequence[int] = (32, 64), hidden: int = 512,
        padding: int = 2,
    ) -> None:
        super().__init__()
        in_channels, height, width = _image_shape(input_shape)
        convs: list[nn.Module] = []
        for out_channels in channels:
            convs += [nn.Conv2d(in_channels, int(out_channels), 5, padding=int(padding)), nn.ReLU(), nn.MaxPool2d(2)]
            in_channels = int(out_channels)
            height, width = (height + 2 * int(padding) - 4) // 2, (width + 2 * int(padding) - 4) // 2
        if height < 1 or width < 1:
            raise ValueError(f"input {tuple(input_shape)} is too small for {len(channels)} pooling stages")
        self.features = nn.Sequential(*convs)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(in_channels * height * width, int(hidden)), nn.ReLU(),
            nn.Linear(int(hidden), num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class _BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(groups, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.GroupNorm(groups, out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A CIFAR-style ResNet with GroupNorm; `blocks=[2,2,2], widths=[16,32,64]` is ResNet-14.

    GroupNorm instead of BatchNorm because batch statistics neither average well across non-IID clients nor
    batch under `torch.func.vmap` (the vectorized engine).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        blocks: Sequence[int] = (2, 2, 2),
        widths: Sequence[int] = (16, 32, 64),
        groups: int = 2,
    ) -> None:
        super().__init__()
        in_channels, _, _ = _image_shape(input_shape)
        if len(blocks) != len(widths):
            raise ValueError(f"model.blocks {list(blocks)} and model.widths {list(widths)} must have equal length")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, int(widths[0]), 3, 1, 1, bias=False), nn.GroupNorm(groups, int(widths[0])), nn.ReLU()
        )
        stages: list[nn.Module] = []
        channels = int(widths[0])
        for stage, (count, width) in enumerate(zip(blocks, widths, strict=True)):
            for index in range(int(count)):
                stride = 2 if stage > 0 and index == 0 else 1
                stages.append(_BasicBlock(channels, int(width), stride, groups))
                channels = int(width)
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stages(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))
