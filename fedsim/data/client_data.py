"""What one client holds: its partition's training and validation rows, with the configured noise applied.

The ClientApp and the engines that batch clients both read a client's data through `client_data`, so a noisy client
(`fedsim.data.noise`) is noisy on every engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .noise import with_feature_noise, with_label_noise
from .tensors import ArrayDataset

if TYPE_CHECKING:
    from .federation import Federation


def client_data(federation: Federation, experiment: Mapping[str, Any],
                partition_id: int) -> tuple[ArrayDataset, ArrayDataset]:
    """The client's (training, validation) rows with the configured noise applied."""
    train_data, val_data = federation.client_split(partition_id)
    train_data = with_label_noise(train_data, experiment, partition_id, federation.data.num_classes)
    return (with_feature_noise(train_data, experiment, partition_id, split=0),
            with_feature_noise(val_data, experiment, partition_id, split=1))
