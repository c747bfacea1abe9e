"""What every data source gives: a loader a config names, and the data set it loads (a Hugging Face train split for
the partitioners, tensors for training)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from numbers import Real
from typing import ClassVar

import datasets

from ..protocol.constraints import Interval
from .tensors import ArrayDataset

LABEL = "label"
CLIENT_ID = "client_id"
SPLIT_FRACTION = Interval(Real, 0, 1, closed="neither")  # a share of the rows held out (or kept): never none or all


@dataclass(frozen=True)
class LoadedData:
    """One data set, loaded: `train` is what partitioners see; the tensors are what clients and the server train
    and evaluate on (row i of `train_arrays` is row i of `train`)."""

    name: str
    train: datasets.Dataset
    feature_column: str
    train_arrays: ArrayDataset
    test_arrays: ArrayDataset
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self.train_arrays.x.shape[1:])


class DatasetLoader(ABC):
    """What `dataset._target_` names: built with the rest of the `dataset` config entry as keyword arguments.

    Configuration validation reads a loader's class declarations before anything loads: `_parameter_constraints`
    (`fedsim.protocol.constraints`) for its arguments, and `has_sensitive_attribute`: whether its rows carry the
    binary sensitive attribute A (column `sensitive`) that group-fairness strategies and local debiasing need.
    """

    has_sensitive_attribute: ClassVar[bool] = False

    @abstractmethod
    def load(self, seed: int) -> LoadedData:
        """The data set; `seed` drives every random draw and split."""
