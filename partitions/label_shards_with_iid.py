"""FedDisco's NIID-2 partition: most clients hold whole-class label shards, a few hold an equal share of every class."""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Integral
from typing import Any

import numpy as np

from fedsim.protocol.constraints import Interval, InvalidParameter

from .base import PrecomputedPartitioner


class LabelShardsWithIidPartitioner(PrecomputedPartitioner):
    """The NIID-2 rule of FedDisco's reference (`MediaBrain-SJTU/FedDisco`, utils/utils.py `partition_data`,
    `noniid-2`), applied class by class.

    With C classes, K clients of which m are skewed, S = `shards_per_partition` classes per skewed client and
    G = C // S (the skewed clients that cover every class once), each class's rows are cut into shards of
    s = N // C // K rows (the reference's int(N / C / K)):

    - skewed client i holds classes (S i + j) mod C, j < S, and takes G shards of each: the class's rows
      [s G (i // G), s G (i // G + 1));
    - uniform client u (the last `num_iid_partitions` ids) takes one shard of every class: rows
      [s G ceil(m / G) + s u, ... + s).

    On 6 clients (1 uniform) over CIFAR-10 (5,000 rows a class): s = 833; client i < 5 holds 4,165 rows of each of
    classes 2i and 2i+1 and nothing else, client 5 holds 833 rows of every class, 2 rows a class are left out, as in
    the reference (rows no rule reaches belong to no client).

    Deviations, none of which changes that case: (1) the reference indexes the whole label-sorted array at c N / C,
    which on unequal classes crosses into neighbouring classes (stray slivers of other labels); here a class only
    gives its own rows, and a client takes fewer when its class runs short. (2) Which rows of a class a client gets
    is a seeded random choice; the reference takes them in numpy's (unstable) sort order. (3) The reference starts
    the uniform shards at s G floor(m / G), which overlaps the skewed clients' rows unless G divides m; here they
    start after the last skewed shard.
    """

    _parameter_constraints = {
        "num_iid_partitions": [Interval(Integral, 0, None, closed="left")],
        "shards_per_partition": [Interval(Integral, 1, None, closed="left")],
    }

    @classmethod
    def check_arguments(cls, arguments: Mapping[str, Any]) -> None:
        """At least one client is skewed: `num_iid_partitions` < `num_partitions`."""
        uniform, clients = arguments.get("num_iid_partitions", 1), arguments.get("num_partitions")
        if clients is not None and uniform >= clients:
            raise InvalidParameter("num_iid_partitions", uniform, f"an integer in [0, num_partitions={clients})")

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
        labels = np.asarray(self.dataset[self._partition_by]).astype(np.int64)
        num_classes, per_client = int(labels.max()) + 1, self._shards_per_partition
        if per_client > num_classes:
            raise ValueError(f"shards_per_partition={per_client}: at most the {num_classes} classes")
        shard = len(labels) // num_classes // self._num_partitions
        if shard == 0:
            raise ValueError(f"{len(labels)} rows over {num_classes} classes and {self._num_partitions} clients "
                             "leave no row per shard: use fewer clients")
        group = num_classes // per_client
        rng = np.random.default_rng(self._seed)
        classes = [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]
        skewed = self._num_partitions - self._num_iid
        parts = []
        for client in range(skewed):
            start = shard * group * (client // group)
            owned = [(per_client * client + j) % num_classes for j in range(per_client)]
            parts.append(np.concatenate([classes[c][start : start + shard * group] for c in owned]))
        first = shard * group * math.ceil(skewed / group)
        for uniform in range(self._num_iid):
            start = first + shard * uniform
            parts.append(np.concatenate([rows[start : start + shard] for rows in classes]))
        return [np.sort(part) for part in parts]
