"""Data sets as Hugging Face `datasets.Dataset` (so flwr-datasets partitioners apply), and the federation built
from them."""

from .base import LoadedData
from .builtin import generate_synthetic
from .federation import Federation, build_federation, federation_for, load_data, partition_indices
from .tensors import ArrayDataset

__all__ = [
    "ArrayDataset",
    "Federation",
    "LoadedData",
    "build_federation",
    "federation_for",
    "generate_synthetic",
    "load_data",
    "partition_indices",
]
