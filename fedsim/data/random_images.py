"""`dataset=random`: seeded Gaussian inputs with uniform random labels, for throughput and scale benchmarks.

What the pixels show does not change how long a round takes, so the benchmark workloads (e.g. W1: 1x28x28 inputs,
10 classes) use this instead of a download. The partitioners see only the label column: use label- or size-based
partitions (iid, dirichlet, shard, ...), not the embedding-based ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import numpy as np
import torch

from .base import LABEL, LoadedData
from .tensors import ArrayDataset


def load_random_data(num_samples: int, shape: Sequence[int], num_classes: int, test_samples: int, seed: int) -> LoadedData:
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
