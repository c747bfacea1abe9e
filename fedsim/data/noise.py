"""Noisy clients for contribution studies: what a client holds when the config marks it noisy.

Two kinds, both seeded by (seed, partition id), so the same rows get the same noise every round:
- `label_noise`: a share of the client's *training* labels redrawn at random (an annotator who errs); its
  validation rows stay clean.
- `feature_noise`: Gaussian noise on every input of the client, training and validation rows alike (a site whose
  scanner or sensor is noisier: its own data really looks like that, as with FedCE's domain-shifted sites).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from .tensors import ArrayDataset

_LABEL_SALT, _FEATURE_SALT = 7919, 104729


LABEL_NOISE_PROFILES = ("constant", "linear")


def label_noise_rates(experiment: Mapping[str, Any]) -> dict[int, float]:
    """Each noisy client's label-noise rate: `label_noise.rate` for every listed client (`profile: constant`), or
    rates spread evenly from 0 for the first listed client to `rate` for the last (`profile: linear`, Fair-yet-Equal's
    "label_noise_different" clients); clients not listed are absent (rate 0)."""
    noise = experiment.get("label_noise") or {}
    clients = [int(pid) for pid in noise.get("clients") or []]
    rate = float(noise.get("rate", 0.0))
    if noise.get("profile", "constant") == "linear" and len(clients) > 1:
        return {pid: rate * position / (len(clients) - 1) for position, pid in enumerate(clients)}
    return dict.fromkeys(clients, rate)


def with_label_noise(data: ArrayDataset, experiment: Mapping[str, Any], partition_id: int,
                     num_classes: int) -> ArrayDataset:
    """`data` with round(rate * n) seeded rows relabelled uniformly at random over all classes (symmetric noise, so
    about rate * (C-1)/C of the labels end up wrong), rate this partition's (`label_noise_rates`); else `data`."""
    rate = label_noise_rates(experiment).get(partition_id, 0.0)
    if rate == 0 or len(data) == 0:
        return data
    rng = np.random.default_rng([int(experiment["seed"]), partition_id, _LABEL_SALT])
    rows = rng.choice(len(data), size=round(rate * len(data)), replace=False)
    labels = data.y.clone()
    labels[torch.as_tensor(rows, dtype=torch.long)] = torch.as_tensor(rng.integers(0, num_classes, len(rows)),
                                                                      dtype=labels.dtype)
    return ArrayDataset(data.x, labels, data.sensitive)


def with_feature_noise(data: ArrayDataset, experiment: Mapping[str, Any], partition_id: int,
                       split: int) -> ArrayDataset:
    """`data` + N(0, std²) on every input value if this partition is in `feature_noise.clients`; else `data`.

    `std` is in the data set's own input units (digits and image sets are scaled to [0, 1]). `split` keeps the
    training and validation draws independent.
    """
    noise = experiment.get("feature_noise") or {}
    std = float(noise.get("std", 0.0))
    if partition_id not in (noise.get("clients") or []) or std == 0 or len(data) == 0:
        return data
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence(
        [int(experiment["seed"]), partition_id, _FEATURE_SALT, split]).generate_state(1)[0]))
    noisy = data.x + std * torch.randn(data.x.shape, generator=generator, dtype=data.x.dtype)
    return ArrayDataset(noisy, data.y, data.sensitive)
