"""Data sets as Hugging Face `datasets.Dataset` (so flwr-datasets partitioners apply), and the federation built
from them.

The names below are imported on first use (PEP 562): importing `fedsim.data.tensors` or `fedsim.data.noise`, as the
ClientApp does, then loads neither the loaders nor `datasets`, scikit-learn and pandas behind them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_attributes

if TYPE_CHECKING:
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

# public name -> the module that defines it
_LAZY = {
    "ArrayDataset": ".tensors",
    "Federation": ".federation",
    "LoadedData": ".base",
    "build_federation": ".federation",
    "federation_for": ".federation",
    "generate_synthetic": ".builtin",
    "load_data": ".federation",
    "partition_indices": ".federation",
}
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
