"""A synthetic binary task with a binary sensitive attribute A, for fairness experiments that must run offline.

Rows carry `x`, `label` and `sensitive`, so any partitioner can split the federation by A (FairFed's experiments:
`partition=dirichlet partition.partition_by=sensitive`).
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real

import datasets
import numpy as np
import torch

from ..protocol.constraints import Interval
from .base import LABEL, SPLIT_FRACTION, DatasetLoader, LoadedData
from .tensors import ArrayDataset

SENSITIVE = "sensitive"


def generate_fair_synthetic(  # pylint: disable=too-many-arguments
    num_samples: int, dim: int, correlation: float, sensitive_share: float, signal: float, leak: float, seed: int,
    draw_salt: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, a): A ~ Bernoulli(sensitive_share); P(Y=1 | A=a) = 0.5 + correlation/2 for a = 0, 0.5 - correlation/2
    for a = 1; x = signal (2y-1) u + leak (2a-1) v + N(0, I_dim), with u, v fixed random orthogonal unit directions.

    Because A leaks into x (leak > 0) and Y depends on A (correlation > 0), the most accurate model also predicts
    from A: an unconstrained model favours group 0 (positive SPD and EOD), which is what fairness methods must undo.
    """
    rng = np.random.default_rng([seed, 5150])
    u, v = np.linalg.qr(rng.normal(size=(dim, 2)))[0].T
    if draw_salt is not None:  # other rows from the same directions (a shifted test split)
        rng = np.random.default_rng([seed, draw_salt])
    a = (rng.random(num_samples) < sensitive_share).astype(np.int64)
    p_positive = np.where(a == 0, 0.5 + correlation / 2, 0.5 - correlation / 2)
    y = (rng.random(num_samples) < p_positive).astype(np.int64)
    x = signal * (2 * y - 1)[:, None] * u + leak * (2 * a - 1)[:, None] * v + rng.normal(size=(num_samples, dim))
    return x.astype(np.float32), y, a


def load_fair_synthetic_data(  # pylint: disable=too-many-arguments
    num_samples: int, dim: int, correlation: float, sensitive_share: float, signal: float, leak: float,
    test_fraction: float, seed: int, test_correlation: float | None = None, test_sensitive_share: float | None = None,
) -> LoadedData:
    """The generated rows, the last `test_fraction` of a seeded shuffle held out as the server's test split.

    With `test_correlation` or `test_sensitive_share`, the test split is instead drawn afresh (as many rows, same
    directions u and v) from the generator with those values: a test distribution shifted from the training one,
    the setting of agnostic fairness (AgnosticFair), where a model must stay fair on data it was not trained on.
    """
    x, y, a = generate_fair_synthetic(num_samples, dim, correlation, sensitive_share, signal, leak, seed)
    order = np.random.default_rng([seed, 5151]).permutation(num_samples)
    cut = num_samples - int(round(test_fraction * num_samples))
    train_rows, test_rows = order[:cut], order[cut:]

    def arrays(rows: np.ndarray) -> ArrayDataset:
        return ArrayDataset(torch.from_numpy(x[rows]), torch.from_numpy(y[rows]), torch.from_numpy(a[rows]))

    test = arrays(test_rows)
    if test_correlation is not None or test_sensitive_share is not None:
        shifted = generate_fair_synthetic(
            num_samples, dim, correlation if test_correlation is None else test_correlation,
            sensitive_share if test_sensitive_share is None else test_sensitive_share, signal, leak, seed,
            draw_salt=5152)
        test = ArrayDataset(*(torch.from_numpy(values[: len(test_rows)]) for values in shifted))
    train = datasets.Dataset.from_dict({"x": x[train_rows], LABEL: y[train_rows], SENSITIVE: a[train_rows]})
    return LoadedData(
        name="fair_synthetic",
        train=train,
        feature_column="x",
        train_arrays=arrays(train_rows),
        test_arrays=test,
        num_classes=2,
    )


@dataclass(frozen=True)
class FairSynthetic(DatasetLoader):  # pylint: disable=too-many-instance-attributes
    """`dataset=fair_synthetic`: the generated rows, with their sensitive attribute."""

    name: str = "fair_synthetic"
    num_samples: int = 10_000
    dim: int = 10
    correlation: float = 0.6
    sensitive_share: float = 0.5
    signal: float = 1.0
    leak: float = 2.0
    test_fraction: float = 0.2
    test_correlation: float | None = None
    test_sensitive_share: float | None = None

    has_sensitive_attribute = True
    _parameter_constraints = {
        "num_samples": [Interval(Integral, 2, None, closed="left")],
        "dim": [Interval(Integral, 2, None, closed="left")],
        "correlation": [Interval(Real, 0, 1, closed="left")],
        "sensitive_share": [Interval(Real, 0, 1, closed="neither")],
        "signal": [Interval(Real, 0, None, closed="left")],
        "leak": [Interval(Real, 0, None, closed="left")],
        "test_fraction": [SPLIT_FRACTION],
        "test_correlation": [None, Interval(Real, 0, 1, closed="left")],
        "test_sensitive_share": [None, Interval(Real, 0, 1, closed="neither")],
    }

    def load(self, seed: int) -> LoadedData:
        return load_fair_synthetic_data(int(self.num_samples), int(self.dim), float(self.correlation),
                                        float(self.sensitive_share), float(self.signal), float(self.leak),
                                        float(self.test_fraction), seed,
                                        None if self.test_correlation is None else float(self.test_correlation),
                                        None if self.test_sensitive_share is None else float(self.test_sensitive_share))
