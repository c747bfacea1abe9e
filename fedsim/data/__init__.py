"""Data sets as Hugging Face `datasets.Dataset` (so flwr-datasets partitioners apply), and the federation built
from them. A `dataset` config entry names its loader (`_target_: fedsim.data.Digits`), a `DatasetLoader`.

The names below are imported on first use (PEP 562): importing `fedsim.data.tensors` or `fedsim.data.noise`, as the
ClientApp does, then loads neither the loaders nor `datasets`, scikit-learn and pandas behind them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..protocol.lazy import lazy_attributes

if TYPE_CHECKING:
    from .adult import Adult
    from .base import DatasetLoader, LoadedData
    from .builtin import Digits, Synthetic, generate_synthetic
    from .fair_synthetic import FairSynthetic
    from .federation import Federation, build_federation, federation_for, load_data, partition_indices
    from .hub import HubDataset
    from .local import LocalFiles
    from .random_images import RandomImages
    from .tensors import ArrayDataset

__all__ = [
    "Adult",
    "ArrayDataset",
    "DatasetLoader",
    "Digits",
    "FairSynthetic",
    "Federation",
    "HubDataset",
    "LoadedData",
    "LocalFiles",
    "RandomImages",
    "Synthetic",
    "build_federation",
    "federation_for",
    "generate_synthetic",
    "load_data",
    "partition_indices",
]

# public name -> the module that defines it
_LAZY = {
    "Adult": ".adult",
    "ArrayDataset": ".tensors",
    "DatasetLoader": ".base",
    "Digits": ".builtin",
    "FairSynthetic": ".fair_synthetic",
    "Federation": ".federation",
    "HubDataset": ".hub",
    "LoadedData": ".base",
    "LocalFiles": ".local",
    "RandomImages": ".random_images",
    "Synthetic": ".builtin",
    "build_federation": ".federation",
    "federation_for": ".federation",
    "generate_synthetic": ".builtin",
    "load_data": ".federation",
    "partition_indices": ".federation",
}
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
