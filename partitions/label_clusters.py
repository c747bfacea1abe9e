"""Label clusters with tiny clusters: FedCollab's `cluster4` label-shift federation with `clusterexp` subsampling.

Clients fall into four clusters that share some labels and not others, and whole clusters can be made tiny, so that
who should train with whom has a right answer: the clusters, with the tiny clients joining a large one that shares
their labels. This is the label-shift setting of Bao et al. (ICML 2023), from their reference code
(`partition/cluster_partition.py`, `partition/subsample.py`).
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np

from fedsim.protocol.constraints import Interval, InvalidParameter

from .base import PrecomputedPartitioner

NUM_CLUSTERS = 4


def cluster_label_shares(k: float) -> np.ndarray:
    """The reference's 4 x 10 matrix: the share of each label's rows each cluster takes. Clusters 0 and 1 share
    labels 1-3, clusters 2 and 3 labels 6-8; each also has one label of its own (0, 4, 5, 9) at share k."""
    shares = np.zeros((NUM_CLUSTERS, 10))
    shares[0, [0, 1, 2, 3]] = [k, 0.5, 0.5, 0.5]
    shares[1, [1, 2, 3, 4]] = [0.5, 0.5, 0.5, k]
    shares[2, [5, 6, 7, 8]] = [k, 0.5, 0.5, 0.5]
    shares[3, [6, 7, 8, 9]] = [0.5, 0.5, 0.5, k]
    return shares


class LabelClusterPartitioner(PrecomputedPartitioner):
    """Four label clusters of num_partitions / 4 clients each, then whole groups of clusters subsampled.

    Cluster c's clients split its share of every label equally (the cumulative rounding of the reference). Then the
    clients fall into `subsample_groups` equal consecutive groups and group g keeps exp(−g · `subsample_decay`) of
    each label's rows (the reference's `clusterexp_<groups>_<decay>`; 0 keeps everything). FedCollab's label-shift
    example is k = 0.25, 2 groups, decay 5 on FMNIST (2100 vs 14 rows per client); digits, 8 times smaller, needs a
    smaller decay (2: about 58 vs 8 rows).

    Needs 10 classes and a multiple of 4 clients. Deviation: the rows of each label are shuffled with `seed` first
    (the reference takes them in the data set's order).
    """

    _parameter_constraints = {
        "k": [Interval(Real, 0, 1, closed="both")],
        "subsample_groups": [Interval(Integral, 1, None, closed="left")],
        "subsample_decay": [Interval(Real, 0, None, closed="left")],
    }

    def __init__(self, num_partitions: int, partition_by: str = "label", k: float = 0.25, subsample_groups: int = 2,
                 subsample_decay: float = 0.0, seed: int | None = 42) -> None:
        super().__init__(num_partitions)
        if num_partitions % NUM_CLUSTERS or num_partitions % subsample_groups:
            raise ValueError(f"num_partitions={num_partitions}: a multiple of {NUM_CLUSTERS} and of subsample_groups")
        self.partition_by, self.k, self.seed = partition_by, k, seed
        self.subsample_groups, self.subsample_decay = subsample_groups, subsample_decay

    @classmethod
    def check_arguments(cls, arguments: dict) -> None:
        clients = arguments.get("num_partitions")
        groups = arguments.get("subsample_groups", 2)
        if isinstance(clients, int) and (clients % NUM_CLUSTERS or clients % groups):
            raise InvalidParameter("num_partitions", clients,
                                   f"a multiple of {NUM_CLUSTERS} and of subsample_groups ({groups}): four clusters")

    def client_rates(self) -> np.ndarray:
        """The share of its rows each client keeps (the reference's `clusterexp` rates)."""
        rates = np.exp(-np.arange(self.subsample_groups) * self.subsample_decay)
        return np.repeat(rates, self.num_partitions // self.subsample_groups)

    def _compute_partition_indices(self) -> list[np.ndarray]:
        labels = np.asarray(self.dataset[self.partition_by])
        classes = np.unique(labels)
        if len(classes) != 10:
            raise ValueError(f"LabelClusterPartitioner needs 10 classes; the data has {len(classes)}")
        rng = np.random.default_rng(self.seed)
        by_label = [rng.permutation(np.flatnonzero(labels == label)) for label in classes]
        per_cluster = self.num_partitions // NUM_CLUSTERS
        client_shares = np.repeat(cluster_label_shares(self.k), per_cluster, axis=0) / per_cluster
        counts = np.array([len(rows) for rows in by_label])
        bounds = np.vstack([np.zeros((1, 10), dtype=int), (client_shares.cumsum(axis=0) * counts + 0.49).astype(int)])
        rates = self.client_rates()
        partitions = []
        for client in range(self.num_partitions):
            rows = []
            for label in range(10):
                mine = by_label[label][bounds[client, label]:bounds[client + 1, label]]
                rows.append(mine[:round(len(mine) * rates[client])])
            partitions.append(np.sort(np.concatenate(rows)).astype(np.int64))
        return partitions
