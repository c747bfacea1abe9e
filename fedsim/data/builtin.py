"""Offline data sets: scikit-learn's digits and FedProx's Synthetic(alpha, beta)."""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real

import datasets
import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from ..protocol.constraints import Interval
from .base import CLIENT_ID, LABEL, SPLIT_FRACTION, DatasetLoader, LoadedData
from .tensors import ArrayDataset

SYNTHETIC_DIMENSION = 60
SYNTHETIC_CLASSES = 10


def load_digits_data(test_fraction: float, seed: int) -> LoadedData:
    """8x8 digit images scaled to [0, 1], as 1x8x8 tensors; a stratified, seeded test split."""
    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_fraction, stratify=labels, random_state=seed
    )
    train = datasets.Dataset.from_dict({"x": x_train.reshape(len(x_train), -1), LABEL: y_train})
    return LoadedData(
        name="digits",
        train=train,
        feature_column="x",
        train_arrays=ArrayDataset(torch.from_numpy(x_train), torch.from_numpy(y_train)),
        test_arrays=ArrayDataset(torch.from_numpy(x_test), torch.from_numpy(y_test)),
        num_classes=10,
    )


@dataclass(frozen=True)
class Digits(DatasetLoader):
    """`dataset=digits`: scikit-learn's 8x8 digits, `test_fraction` held out (stratified, seeded)."""

    name: str = "digits"
    test_fraction: float = 0.2

    _parameter_constraints = {"test_fraction": [SPLIT_FRACTION]}

    def load(self, seed: int) -> LoadedData:
        return load_digits_data(float(self.test_fraction), seed)


def generate_synthetic(
    alpha: float, beta: float, iid: bool, num_users: int, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """FedProx's Synthetic(alpha, beta): per-user features and labels, drawn in the reference code's order.

    Follows `litian96/FedProx` data/synthetic_*/generate_synthetic.py: sizes lognormal(4, 2) + 50; the per-user
    model prior u_k ~ N(0, alpha) and feature-mean prior B_k ~ N(0, beta), with alpha and beta used as standard
    deviations as the reference code does (the paper writes variances); v_k ~ N(B_k, 1); Sigma = diag(j^-1.2);
    W_k ~ N(u_k, 1), b_k ~ N(u_k, 1); x ~ N(v_k, Sigma); y = argmax(x W_k + b_k). Synthetic-IID follows
    data/synthetic_iid/generate_iid.py as it stands in the repository (commit 3eed82e): sizes, then one shared
    W, b ~ N(0, 1), then each user's x ~ N(0, Sigma); alpha and beta are unused, as there. (Its first version,
    b00d206, also drew the priors and per-user W_k, b_k and discarded them: a different sequence of draws.) The
    reference draws from numpy's unseeded global state; here a `RandomState(seed)` gives the same sequence of draws
    as the reference after `np.random.seed(seed)`.
    """
    rng = np.random.RandomState(seed)
    sizes = rng.lognormal(4, 2, num_users).astype(int) + 50
    covariance = np.diag(np.power(np.arange(1, SYNTHETIC_DIMENSION + 1, dtype=np.float64), -1.2))
    if iid:
        shared_w = rng.normal(0, 1, (SYNTHETIC_DIMENSION, SYNTHETIC_CLASSES))
        shared_b = rng.normal(0, 1, SYNTHETIC_CLASSES)
        feature_means = np.zeros((num_users, SYNTHETIC_DIMENSION))
    else:
        mean_w = rng.normal(0, alpha, num_users)
        mean_b = mean_w
        feature_prior = rng.normal(0, beta, num_users)
        feature_means = np.stack([rng.normal(feature_prior[k], 1, SYNTHETIC_DIMENSION) for k in range(num_users)])
    features, labels = [], []
    for k in range(num_users):
        if iid:
            weights, bias = shared_w, shared_b
        else:
            weights = rng.normal(mean_w[k], 1, (SYNTHETIC_DIMENSION, SYNTHETIC_CLASSES))
            bias = rng.normal(mean_b[k], 1, SYNTHETIC_CLASSES)
        x = rng.multivariate_normal(feature_means[k], covariance, sizes[k])
        features.append(x.astype(np.float32))
        labels.append(np.argmax(x @ weights + bias, axis=1).astype(np.int64))
    return features, labels


def load_synthetic_data(
    alpha: float, beta: float, iid: bool, num_users: int, train_fraction: float, seed: int
) -> LoadedData:
    """Synthetic(alpha, beta) with a `client_id` column (its natural partition) and the users' pooled test parts.

    Each user's samples are shuffled and split as in the reference: the first int(0.9 n_k) train, the rest test.
    """
    features, labels = generate_synthetic(alpha, beta, iid, num_users, seed)
    rng = np.random.RandomState(seed + 1)
    train_x, train_y, train_ids, test_x, test_y = [], [], [], [], []
    for user, (x, y) in enumerate(zip(features, labels, strict=True)):
        order = rng.permutation(len(y))
        cut = int(train_fraction * len(y))
        train_x.append(x[order[:cut]])
        train_y.append(y[order[:cut]])
        train_ids.append(np.full(cut, user, dtype=np.int64))
        test_x.append(x[order[cut:]])
        test_y.append(y[order[cut:]])
    x_train, y_train = np.concatenate(train_x), np.concatenate(train_y)
    train = datasets.Dataset.from_dict({"x": x_train, LABEL: y_train, CLIENT_ID: np.concatenate(train_ids)})
    return LoadedData(
        name="synthetic",
        train=train,
        feature_column="x",
        train_arrays=ArrayDataset(torch.from_numpy(x_train), torch.from_numpy(y_train)),
        test_arrays=ArrayDataset(torch.from_numpy(np.concatenate(test_x)), torch.from_numpy(np.concatenate(test_y))),
        num_classes=SYNTHETIC_CLASSES,
    )


@dataclass(frozen=True)
class Synthetic(DatasetLoader):
    """`dataset=synthetic`: FedProx's Synthetic(alpha, beta) (or Synthetic-IID), one `client_id` per device."""

    name: str = "synthetic"
    alpha: float = 1.0
    beta: float = 1.0
    iid: bool = False
    num_users: int = 30
    train_fraction: float = 0.9

    _parameter_constraints = {
        "alpha": [Interval(Real, 0, None, closed="left")],
        "beta": [Interval(Real, 0, None, closed="left")],
        "iid": [bool],
        "num_users": [Interval(Integral, 1, None, closed="left")],
        "train_fraction": [SPLIT_FRACTION],
    }

    def load(self, seed: int) -> LoadedData:
        return load_synthetic_data(float(self.alpha), float(self.beta), bool(self.iid), int(self.num_users),
                                   float(self.train_fraction), seed)
