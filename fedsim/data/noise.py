"""Label noise on chosen clients' training rows: a client whose data hurts the federation, for contribution studies."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from .tensors import ArrayDataset


def with_label_noise(data: ArrayDataset, experiment: Mapping[str, Any], partition_id: int, num_classes: int) -> ArrayDataset:
    """`data` with round(rate * n) seeded rows relabelled uniformly at random over all classes (symmetric noise, so
    about rate * (C-1)/C of the labels end up wrong) if this partition is in `label_noise.clients`; else `data`.

    Only the training split passes through here: the client's validation rows stay clean. The same rows and labels
    are drawn every round (seed, partition id).
    """
    noise = experiment.get("label_noise") or {}
    rate = float(noise.get("rate", 0.0))
    if partition_id not in (noise.get("clients") or []) or rate == 0 or len(data) == 0:
        return data
    rng = np.random.default_rng([int(experiment["seed"]), partition_id, 7919])
    rows = rng.choice(len(data), size=round(rate * len(data)), replace=False)
    labels = data.y.clone()
    labels[torch.as_tensor(rows, dtype=torch.long)] = torch.as_tensor(rng.integers(0, num_classes, len(rows)), dtype=labels.dtype)
    return ArrayDataset(data.x, labels, data.sensitive)
