"""FedDisco's NIID-2 partition: most clients hold sorted label shards, a few hold a uniform random sample."""

from __future__ import annotations

import numpy as np

from .base import PrecomputedPartitioner


class LabelShardsWithIidPartitioner(PrecomputedPartitioner):
    """`num_iid_partitions` clients get a uniform random N / num_partitions rows each; the rest of the rows are
    sorted by label and cut into equal contiguous shards, `shards_per_partition` consecutive shards per client.

    With 6 clients, 1 IID, 2 shards each and 10 balanced classes (FedDisco's NIID-2 on CIFAR-10), client i < 5
    holds classes 2i and 2i+1 and client 5 is uniform. The IID clients are the last partition ids.
    """

    def __init__(
        self,
        num_partitions: int,
        partition_by: str = "label",
        num_iid_partitions: int = 1,
        shards_per_partition: int = 2,
        seed: int | None = 42,
    ) -> None:
        super().__init__(num_partitions)
        if not 0 <= num_iid_partitions < num_partitions:
            raise ValueError(f"num_iid_partitions={num_iid_partitions} must be in [0, num_partitions={num_partitions})")
        if shards_per_partition < 1:
            raise ValueError(f"shards_per_partition={shards_per_partition} must be >= 1")
        self._partition_by = partition_by
        self._num_iid = num_iid_partitions
        self._shards_per_partition = shards_per_partition
        self._seed = seed

    def _compute_partition_indices(self) -> list[np.ndarray]:
        rng = np.random.default_rng(self._seed)
        total = len(self.dataset)
        iid_size = total // self._num_partitions
        order = rng.permutation(total)
        iid = [order[i * iid_size : (i + 1) * iid_size] for i in range(self._num_iid)]
        rest = order[self._num_iid * iid_size :]
        labels = np.asarray(self.dataset[self._partition_by])[rest]
        rest = rest[np.argsort(labels, kind="stable")]
        skewed_clients = self._num_partitions - self._num_iid
        shards = np.array_split(rest, skewed_clients * self._shards_per_partition)
        step = self._shards_per_partition
        skewed = [np.concatenate(shards[i * step : (i + 1) * step]) for i in range(skewed_clients)]
        return [np.sort(part) for part in skewed + iid]
