"""`dataset=random`: seeded Gaussian inputs with uniform random labels, for throughput and scale benchmarks.

What the pixels show does not change how long a round takes, so the benchmark workloads (e.g. W1: 1x28x28 inputs,
10 classes) use this instead of a download. The partitioners see only the label column: use label- or size-based
partitions (iid, dirichlet, shard, ...), not the embedding-based ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from numbers import Integral

import datasets
import numpy as np
import torch

from ..protocol.constraints import Interval, Items
from .base import LABEL, DatasetLoader, LoadedData
from .tensors import ArrayDataset


def load_random_data(num_samples: int, shape: Sequence[int], num_classes: int, test_samples: int,
                     seed: int) -> LoadedData:
    """`num_samples` training and `test_samples` test rows of N(0, 1) inputs of `shape`, labels uniform in 0..C-1."""
    generator = torch.Generator().manual_seed(seed)
    shape = tuple(int(v) for v in shape)
    x_train = torch.randn((num_samples, *shape), generator=generator)
    y_train = torch.randint(0, num_classes, (num_samples,), generator=generator)
    x_test = torch.randn((test_samples, *shape), generator=generator)
    y_test = torch.randint(0, num_classes, (test_samples,), generator=generator)
    train = datasets.Dataset.from_dict({LABEL: np.asarray(y_train.numpy(), dtype=np.int64)})
    return LoadedData(
        name="random",
        train=train,
        feature_column=LABEL,
        train_arrays=ArrayDataset(x_train, y_train),
        test_arrays=ArrayDataset(x_test, y_test),
        num_classes=int(num_classes),
    )


POSITIVE_INTEGER = Interval(Integral, 1, None, closed="left")


@dataclass(frozen=True)
class RandomImages(DatasetLoader):
    """`dataset=random`: seeded random inputs of `shape` and uniform labels, nothing to download."""

    name: str = "random"
    num_samples: int = 10_000
    shape: list[int] = field(default_factory=lambda: [1, 28, 28])
    num_classes: int = 10
    test_samples: int = 1000

    _parameter_constraints = {
        "num_samples": [POSITIVE_INTEGER],
        "shape": [Items(POSITIVE_INTEGER, text="a list of positive integers, e.g. [1, 28, 28]")],
        "num_classes": [Interval(Integral, 2, None, closed="left")],
        "test_samples": [POSITIVE_INTEGER],
    }

    def load(self, seed: int) -> LoadedData:
        return load_random_data(int(self.num_samples), list(self.shape), int(self.num_classes), int(self.test_samples),
                                seed)
