"""UCI Adult from OpenML (A = sex, Y = income > 50K): the FairFed paper's main data set. Needs the internet once
(scikit-learn then caches it under its data home)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split

from ..errors import DataError, first_line
from .base import LABEL, SPLIT_FRACTION, DatasetLoader, LoadedData
from .fair_synthetic import SENSITIVE
from .hub import host_reachable
from .tabular import encode_features
from .tensors import ArrayDataset

OPENML_HOST = "www.openml.org"
OFFLINE_HINT = "run once where you have internet (scikit-learn caches it), or use dataset=fair_synthetic offline"


def _openml_reachable(timeout: float = 3.0) -> bool:
    return host_reachable(OPENML_HOST, timeout)


def _cached() -> bool:
    from sklearn.datasets import get_data_home

    return any((Path(get_data_home()) / "openml").glob("**/*.gz"))


def adult_from_frame(frame: pd.DataFrame, test_fraction: float, seed: int) -> LoadedData:
    """Features as `fedsim.data.tabular.encode_features` makes them (numeric columns standardised with the training
    split's mean and std, categorical ones one-hot, a missing value its own category); `sex` stays a feature, as in
    the FairFed paper. A = 1 for Male, Y = 1 for income >50K. The test split is stratified on (A, Y) and seeded."""
    target = frame["class"].astype(str).str.strip().str.rstrip(".")
    y = (target == ">50K").to_numpy(np.int64)
    a = (frame["sex"].astype(str).str.strip() == "Male").to_numpy(np.int64)
    rows = np.arange(len(frame))
    train_rows, test_rows = train_test_split(rows, test_size=test_fraction, stratify=2 * a + y, random_state=seed)
    x = encode_features(frame.drop(columns=["class"]), train_rows)

    def arrays(part: np.ndarray) -> ArrayDataset:
        return ArrayDataset(torch.from_numpy(x[part]), torch.from_numpy(y[part]), torch.from_numpy(a[part]))

    train = datasets.Dataset.from_dict({"x": x[train_rows], LABEL: y[train_rows], SENSITIVE: a[train_rows]})
    return LoadedData("adult", train, "x", arrays(train_rows), arrays(test_rows), num_classes=2)


def load_adult_data(test_fraction: float, seed: int) -> LoadedData:
    """Adult (OpenML id 1590, version 2); without a connection or cache, one DataError line before any training."""
    if not _cached() and not _openml_reachable():
        raise DataError(f"dataset=adult cannot be fetched: {OPENML_HOST} is unreachable; {OFFLINE_HINT}")
    from sklearn.datasets import fetch_openml

    try:
        frame = fetch_openml("adult", version=2, as_frame=True).frame
    except (OSError, ValueError) as error:  # URLError is an OSError
        raise DataError(f"dataset=adult could not be loaded ({first_line(error)}); {OFFLINE_HINT}") from None
    return adult_from_frame(frame, test_fraction, seed)


@dataclass(frozen=True)
class Adult(DatasetLoader):
    """`dataset=adult`: UCI Adult, A = sex."""

    name: str = "adult"
    test_fraction: float = 0.2

    has_sensitive_attribute = True
    _parameter_constraints = {"test_fraction": [SPLIT_FRACTION]}

    def load(self, seed: int) -> LoadedData:
        return load_adult_data(float(self.test_fraction), seed)
