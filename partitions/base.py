"""A thin base for partitioners that decide every client's rows at once."""

from __future__ import annotations

from abc import abstractmethod

import datasets
import numpy as np
from flwr_datasets.partitioner import Partitioner


def largest_remainder(shares: np.ndarray, total: int) -> np.ndarray:
    """Whole numbers proportional to `shares` that add up to `total` (all zeros if the shares are all zero)."""
    shares = np.asarray(shares, dtype=np.float64)
    if shares.sum() <= 0:
        return np.zeros(len(shares), dtype=np.int64)
    exact = shares / shares.sum() * total
    whole = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - whole), kind="stable")
    whole[order[: total - int(whole.sum())]] += 1
    return whole


class PrecomputedPartitioner(Partitioner):
    """Computes all partitions in one pass on first use; `load_partition` then selects a client's rows.

    `all_partition_indices()` also lets fedsim read every client's rows without one `select` per client.
    """

    def __init__(self, num_partitions: int) -> None:
        super().__init__()
        self._num_partitions = num_partitions
        self._indices: list[np.ndarray] | None = None

    @property
    def num_partitions(self) -> int:
        return self._num_partitions

    def load_partition(self, partition_id: int) -> datasets.Dataset:
        return self.dataset.select(self.all_partition_indices()[partition_id])

    def all_partition_indices(self) -> list[np.ndarray]:
        """Every client's row indices, computed once."""
        if self._indices is None:
            self._indices = self._compute_partition_indices()
        return self._indices

    @abstractmethod
    def _compute_partition_indices(self) -> list[np.ndarray]:
        """Row indices of every partition, in partition-id order."""
