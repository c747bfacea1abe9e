"""From config to federation: load the data set, partition it, and give each client its train/validation split.

Everything here is a pure function of the experiment config, so the server (for validation and reports) and every
client process (in whatever engine) compute the same partition independently; a per-process cache makes the
in-process engine load and partition once.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import datasets
import hydra.utils
import numpy as np
from flwr_datasets.partitioner import NaturalIdPartitioner, Partitioner

from ..build import locate
from ..errors import ConfigError, DataError, first_line
from ..protocol.capabilities import PrecomputesPartitions, ReportsClusters
from ..protocol.errors import PartitionImpossible
from .base import LoadedData
from .tensors import ArrayDataset

# fedsim shows its own progress; the "Flattening the indices" bars that flwr-datasets' partitioners make `datasets`
# draw would break it and clutter logs, in every process that partitions (CLI, Ray actors, deployed nodes).
datasets.disable_progress_bars()

INDEX_COLUMN = "__fedsim_index__"


def load_data(dataset: Mapping[str, Any], seed: int) -> LoadedData:
    """Load the data set a `dataset` config group entry describes: its `_target_` loader (a `DatasetLoader`, as
    configuration validation checks), built with the entry's other keys."""
    arguments = {key: value for key, value in dataset.items() if key != "_target_"}
    return locate(str(dataset["_target_"]))(**arguments).load(seed)


@contextmanager
def _without_natural_id_bar() -> Iterator[None]:
    """flwr-datasets' NaturalIdPartitioner draws a tqdm bar of its own ("Generating partition_id_to_indices") that
    `datasets.disable_progress_bars` does not reach; fedsim reports progress itself."""
    from flwr_datasets.partitioner import natural_id_partitioner

    drawn = natural_id_partitioner.tqdm
    natural_id_partitioner.tqdm = lambda iterable, **_: iterable
    try:
        yield
    finally:
        natural_id_partitioner.tqdm = drawn


def partition_indices(train: datasets.Dataset, partitioner: Partitioner) -> list[np.ndarray]:
    """Run any flwr-datasets Partitioner and return, per partition, the row indices it chose.

    The partitioner sees the data set in Arrow format, so its `np.array(dataset[column])` is one copy rather than a
    Python loop over rows (7 s for a million labels). fedsim's own partitioners hand over all partitions at once
    (`all_partition_indices`). For flwr-datasets' partitioners an index column rides along and partition 0 is read
    through `load_partition`; when the partitioner keeps every partition's rows in `_partition_id_to_indices` (its
    Dirichlet, shard, pathological and natural-id partitioners do) and partition 0 matches it, the rest are read from
    there instead of one `select` each (1.4 ms a partition: 14 s for 10,000 clients).
    """
    if isinstance(partitioner, PrecomputesPartitions):
        partitioner.dataset = train
        return [np.asarray(rows, dtype=np.int64) for rows in partitioner.all_partition_indices()]
    partitioner.dataset = train.add_column(INDEX_COLUMN, np.arange(len(train))).with_format("arrow")
    with _without_natural_id_bar():
        first = np.asarray(partitioner.load_partition(0)[INDEX_COLUMN], dtype=np.int64)
    known = getattr(partitioner, "_partition_id_to_indices", None)
    if (isinstance(known, dict) and len(known) == partitioner.num_partitions
            and np.array_equal(np.asarray(known[0]), first)):
        return [first] + [np.asarray(known[pid], dtype=np.int64) for pid in range(1, partitioner.num_partitions)]
    return [first] + [
        np.asarray(partitioner.load_partition(pid)[INDEX_COLUMN], dtype=np.int64)
        for pid in range(1, partitioner.num_partitions)
    ]


def class_balanced_rows(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """`size` rows taking classes in turn (a class that runs out is skipped), each class's rows in seeded order."""
    rng = np.random.default_rng([seed, 104729])
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    chosen: list[int] = []
    for depth in range(max(len(pool) for pool in pools)):
        for pool in pools:
            if depth < len(pool) and len(chosen) < size:
                chosen.append(int(pool[depth]))
    return np.sort(np.asarray(chosen, dtype=np.int64))


@dataclass(frozen=True)
class Federation:
    """A partitioned data set: each client's rows, split into local train and validation parts, and the server's
    proxy rows (carved out of the training pool before partitioning, so no client holds them)."""

    data: LoadedData
    client_indices: tuple[np.ndarray, ...]
    val_fraction: float
    seed: int
    proxy_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    cluster_counts: np.ndarray | None = None  # clients x embedding clusters, for partitions built on clusters

    @property
    def proxy(self) -> ArrayDataset:
        return self.data.train_arrays.subset(self.proxy_rows)

    @property
    def num_clients(self) -> int:
        return len(self.client_indices)

    def client_rows(self, partition_id: int) -> tuple[np.ndarray, np.ndarray]:
        """The client's (train, validation) row indices: a seeded shuffle, then the first share is validation."""
        rows = self.client_indices[partition_id]
        order = np.random.default_rng([self.seed, partition_id]).permutation(rows)
        num_val = int(round(self.val_fraction * len(rows)))
        if self.val_fraction > 0 and len(rows) >= 2:
            num_val = min(max(num_val, 1), len(rows) - 1)
        return order[num_val:], order[:num_val]

    def client_split(self, partition_id: int) -> tuple[ArrayDataset, ArrayDataset]:
        train_rows, val_rows = self.client_rows(partition_id)
        return self.data.train_arrays.subset(train_rows), self.data.train_arrays.subset(val_rows)

    def label_counts(self) -> np.ndarray:
        """Clients x classes matrix of training-sample counts (what FedDisco and the partition heatmap need)."""
        labels = self.data.train_arrays.y.numpy()
        return np.stack([np.bincount(labels[rows], minlength=self.data.num_classes) for rows in self.client_indices])


def _partition_name(partition: Mapping[str, Any]) -> str:
    return str(partition.get("_target_", "?")).rsplit(".", 1)[-1]


def _carve_proxy(data: LoadedData, proxy_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(proxy rows, client pool rows): the server's class-balanced proxy set leaves the pool before partitioning."""
    if proxy_size >= len(data.train):
        raise ConfigError("server.proxy_size", proxy_size,
                          f"fewer than the {len(data.train)} training samples of dataset={data.name}")
    if proxy_size == 0:
        return np.zeros(0, dtype=np.int64), np.arange(len(data.train))
    proxy_rows = class_balanced_rows(data.train_arrays.y.numpy(), proxy_size, seed)
    return proxy_rows, np.setdiff1d(np.arange(len(data.train)), proxy_rows)


def build_federation(experiment: Mapping[str, Any]) -> Federation:
    """Load and partition as the experiment config says, refusing partitions that leave a client without data."""
    seed, num_clients = int(experiment["seed"]), int(experiment["num_clients"])
    data = load_data(experiment["dataset"], seed)
    proxy_rows, client_pool = _carve_proxy(data, int(experiment.get("server", {}).get("proxy_size", 0) or 0), seed)
    pool = data.train if len(proxy_rows) == 0 else data.train.select(client_pool)
    if num_clients > len(pool):
        raise ConfigError("num_clients", num_clients,
                          f"at most the {len(pool)} training samples of dataset={data.name}")
    partition = dict(experiment["partition"])
    partitioner = hydra.utils.instantiate(partition)
    by = partition.get("partition_by")
    if by is not None and by not in pool.column_names:
        raise ConfigError("partition.partition_by", by,
                          f"a column of dataset={data.name}: {', '.join(pool.column_names)}")
    if isinstance(partitioner, NaturalIdPartitioner):
        ids = len(set(pool[by]))
        if ids != num_clients:
            raise ConfigError("num_clients", num_clients,
                              f"partition=natural gives one client per {by}: use num_clients={ids}")
    try:
        with warnings.catch_warnings():  # flwr-datasets warns on each retry; the outcome is reported below
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", FutureWarning)
            positions = partition_indices(pool, partitioner)
    except (PartitionImpossible, RuntimeError) as error:  # fedsim's own advice, or an encoder that cannot load
        raise DataError(f"partition ({_partition_name(partition)}): {error}") from None
    except (ValueError, ZeroDivisionError, IndexError) as error:  # what flwr-datasets raises on impossible splits
        raise DataError(
            f"partition ({_partition_name(partition)}) with num_clients={num_clients} failed ({first_line(error)}); "
            "use fewer clients, a larger partition.alpha or a smaller partition.min_partition_size"
        ) from None
    indices = [client_pool[rows] for rows in positions]
    empty = [pid for pid, rows in enumerate(indices) if len(rows) == 0]
    if empty:
        raise DataError(
            f"partition ({_partition_name(partition)}) leaves {len(empty)} of {num_clients} clients without data "
            f"(first: client {empty[0]}); use fewer clients or a less extreme partition"
        )
    clusters = partitioner.embedding_clusters if isinstance(partitioner, ReportsClusters) else None
    cluster_counts = None
    if clusters is not None:
        cluster_counts = np.stack([np.bincount(clusters[rows], minlength=int(clusters.max()) + 1)
                                   for rows in positions])
    return Federation(data, tuple(indices), float(experiment["client"]["val_fraction"]), seed, proxy_rows,
                      cluster_counts)


def _federation_key(experiment: Mapping[str, Any]) -> str:
    keys = ("dataset", "partition", "num_clients", "seed")
    part = {key: experiment[key] for key in keys}
    part["val_fraction"] = experiment["client"]["val_fraction"]
    part["proxy_size"] = experiment.get("server", {}).get("proxy_size", 0)
    return json.dumps(part, sort_keys=True, default=str)


@lru_cache(maxsize=4)
def _cached_federation(key: str) -> Federation:
    parts = json.loads(key)
    return build_federation(
        {**parts, "client": {"val_fraction": parts["val_fraction"]}, "server": {"proxy_size": parts["proxy_size"]}}
    )


def federation_for(experiment: Mapping[str, Any]) -> Federation:
    """The federation of this experiment, built once per process."""
    return _cached_federation(_federation_key(experiment))
