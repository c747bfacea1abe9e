"""What every data source returns: a Hugging Face train split for the partitioners, and tensors for training."""

from __future__ import annotations

from dataclasses import dataclass

import datasets

from .tensors import ArrayDataset

LABEL = "label"
CLIENT_ID = "client_id"


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
