"""Hugging Face Hub data sets, loaded through flwr-datasets' FederatedDataset."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from urllib.parse import urlparse

import datasets

from ..errors import DataError, first_line
from .base import LABEL, DatasetLoader, LoadedData
from .tensors import hf_to_arrays

LOCAL_FILES_HINT = (
    "download it where you have internet (it is then cached; set HF_HUB_OFFLINE=1 to reuse the cache), "
    "or point fedsim at local files: dataset=local dataset.path=/data/train.parquet "
    "dataset.test_path=/data/test.parquet"
)


def host_reachable(host: str, timeout: float = 3.0) -> bool:
    """A quick DNS + TCP probe, so that an offline machine fails in seconds instead of after minutes of retries."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_reachable(timeout: float = 3.0) -> bool:
    return host_reachable(
        urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co", timeout)


def _offline_mode() -> bool:
    return any(os.environ.get(name, "").lower() in {"1", "true", "yes"}
               for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def normalise_columns(split: datasets.Dataset, image_column: str, label_column: str, key: str) -> datasets.Dataset:
    """Check the configured columns exist and rename the label column to `label`."""
    for option, column in (("image_column", image_column), ("label_column", label_column)):
        if column not in split.column_names:
            raise DataError(
                f"{key}.{option}={column!r} is not a column of the data set; its columns are {split.column_names}"
            )
    if label_column != LABEL:
        split = split.rename_column(label_column, LABEL)
    return split


def num_classes_of(split: datasets.Dataset) -> int:
    feature = split.features[LABEL]
    if isinstance(feature, datasets.ClassLabel):
        return int(feature.num_classes)
    return int(max(split[LABEL])) + 1


def load_hub_data(
    name: str, hub_id: str, image_column: str, label_column: str, train_split: str, test_split: str
) -> LoadedData:
    """Load `hub_id`'s train and test splits; without a connection, one clear error instead of retries."""
    from flwr_datasets import FederatedDataset  # imported here: it pulls in the hub client

    if not _offline_mode() and not _hub_reachable():
        raise DataError(f"dataset={name} ({hub_id}) cannot be fetched: the Hugging Face Hub is unreachable; "
                        f"{LOCAL_FILES_HINT}")
    try:
        federated = FederatedDataset(dataset=hub_id, partitioners={train_split: 1}, shuffle=False)
        train = federated.load_split(train_split)
        test = federated.load_split(test_split)
    except (ConnectionError, OSError, ValueError, FileNotFoundError) as error:
        raise DataError(f"dataset={name} ({hub_id}) could not be loaded ({first_line(error)}); "
                        f"{LOCAL_FILES_HINT}") from None
    train = normalise_columns(train, image_column, label_column, "dataset")
    test = normalise_columns(test, image_column, label_column, "dataset")
    return LoadedData(
        name=name,
        train=train,
        feature_column=image_column,
        train_arrays=hf_to_arrays(train, image_column),
        test_arrays=hf_to_arrays(test, image_column),
        num_classes=num_classes_of(train),
    )


@dataclass(frozen=True)
class HubDataset(DatasetLoader):
    """`dataset=mnist`, `cifar10`, `hf`...: a Hugging Face Hub data set with an image (or feature) and a label
    column."""

    hub_id: str
    name: str = "hf"
    image_column: str = "image"
    label_column: str = LABEL
    train_split: str = "train"
    test_split: str = "test"

    _parameter_constraints = {key: [str]
                              for key in ("hub_id", "image_column", "label_column", "train_split", "test_split")}

    def load(self, seed: int) -> LoadedData:
        """The splits as published: `seed` plays no part."""
        return load_hub_data(str(self.name), str(self.hub_id), str(self.image_column), str(self.label_column),
                             str(self.train_split), str(self.test_split))
