"""In-memory tensors of a data set split, and the conversion from Hugging Face columns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    import datasets


@dataclass(frozen=True)
class ArrayDataset:
    """Inputs and integer labels held as tensors; clients index into them instead of copying a split.

    `sensitive` is a binary sensitive attribute A per row (0/1), for fairness data sets; None elsewhere.
    """

    x: torch.Tensor
    y: torch.Tensor
    sensitive: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, indices: np.ndarray) -> ArrayDataset:
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        sensitive = None if self.sensitive is None else self.sensitive[index]
        return ArrayDataset(self.x[index], self.y[index], sensitive)


def images_to_tensor(images: list | np.ndarray) -> torch.Tensor:
    """Stack images (PIL or arrays, HxW or HxWxC, uint8) into a float tensor N x C x H x W scaled to [0, 1]."""
    arrays = [np.asarray(image) for image in images]
    batch = np.stack(arrays)
    if batch.ndim == 3:  # grayscale N x H x W
        batch = batch[:, None, :, :]
    elif batch.ndim == 4:  # N x H x W x C
        batch = batch.transpose(0, 3, 1, 2)
    else:
        raise ValueError(f"cannot read images of shape {batch.shape[1:]}")
    scale = 255.0 if batch.dtype == np.uint8 else 1.0
    return torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32) / scale)


def hf_to_arrays(dataset: datasets.Dataset, feature_column: str, label_column: str = "label") -> ArrayDataset:
    """Read a Hugging Face split into tensors: an image column becomes N x C x H x W, anything else N x D."""
    import datasets  # imported here: the ClientApp uses ArrayDataset and must not load `datasets` at import

    labels = torch.as_tensor(np.asarray(dataset[label_column], dtype=np.int64))
    if isinstance(dataset.features[feature_column], datasets.Image):
        x = images_to_tensor(dataset[feature_column])
    else:
        x = torch.as_tensor(np.asarray(dataset.with_format("numpy")[feature_column], dtype=np.float32))
    return ArrayDataset(x, labels)
