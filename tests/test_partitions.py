"""Label-quantity skew (#C classes per client) and quantity skew: their statistics and errors."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.config import compose_experiment
from fedsim.data import build_federation
from fedsim.errors import DataError
from fedsim.partitions.base import largest_remainder


def _sizes(federation) -> np.ndarray:
    return np.array([len(rows) for rows in federation.client_indices])


def _covers_once(federation) -> bool:
    joined = np.concatenate(federation.client_indices)
    return len(joined) == len(set(joined.tolist())) == len(federation.data.train)


def test_largest_remainder_sums_exactly():
    assert largest_remainder(np.array([1.0, 1.0, 1.0]), 10).tolist() == [4, 3, 3]
    assert largest_remainder(np.array([0.0, 0.0]), 5).tolist() == [0, 0]


def test_classes_per_client_is_niid_bench_sharp_c():
    federation = build_federation(compose_experiment(["partition=classes_per_client", "partition.num_classes_per_partition=3"]))
    counts = federation.label_counts()
    for client, row in enumerate(counts):
        assert (row > 0).sum() == 3
        assert row[client % 10] > 0  # client i always holds class i mod K
    assert _covers_once(federation)


def test_dirichlet_quantity_skew_keeps_labels_iid_and_sizes_unequal():
    skewed = build_federation(compose_experiment(["partition=quantity", "partition.alpha=0.3", "num_clients=8"]))
    even = build_federation(compose_experiment(["partition=quantity", "partition.alpha=1000", "num_clients=8"]))
    assert _covers_once(skewed) and _covers_once(even)
    assert _sizes(skewed).min() >= 10
    spread = lambda f: _sizes(f).std() / _sizes(f).mean()  # noqa: E731
    assert spread(skewed) > 0.5 > 0.05 > spread(even)
    biggest = int(np.argmax(_sizes(skewed)))
    shares = skewed.label_counts()[biggest] / _sizes(skewed)[biggest]
    assert np.abs(shares - 0.1).max() < 0.06  # labels stay IID


def test_lognormal_quantity_skew_grows_with_sigma():
    def spread(sigma: float) -> float:
        sizes = _sizes(build_federation(compose_experiment(
            ["partition=quantity", "partition.distribution=lognormal", f"partition.sigma={sigma}", "num_clients=20",
             "partition.min_partition_size=1"])))
        return sizes.std() / sizes.mean()

    assert spread(0.1) < 0.2 < spread(1.5)


def test_impossible_quantity_skew_is_a_clear_error():
    experiment = compose_experiment(["partition=quantity", "partition.alpha=0.01", "num_clients=100", "partition.min_partition_size=12"])
    with pytest.raises(DataError, match="use fewer clients"):
        build_federation(experiment)


@pytest.mark.parametrize("name", ["dirichlet", "shard", "pathological"])
def test_bulk_read_of_flower_partitions_matches_load_partition(name):
    """partition_indices reads flwr-datasets' partitions in bulk; each must equal what load_partition selects."""
    import datasets
    import hydra.utils

    from fedsim.data import partition_indices

    labels = np.random.default_rng(0).integers(0, 10, 2000)
    data = datasets.Dataset.from_dict({"label": labels, "row": np.arange(2000)})
    experiment = compose_experiment([f"partition={name}", "num_clients=20"])
    bulk = partition_indices(data, hydra.utils.instantiate(experiment["partition"]))
    single = hydra.utils.instantiate(experiment["partition"])
    single.dataset = data
    for pid, rows in enumerate(bulk):
        assert rows.tolist() == single.load_partition(pid)["row"]


@pytest.mark.parametrize("alpha, min_size, balancing, shuffle", [
    (0.5, 0, False, True), (1.0, 55, False, True), (0.3, 5, True, True), (1.0, 0, False, False),
])
def test_dirichlet_gives_flwr_datasets_partitions(alpha, min_size, balancing, shuffle):
    """fedsim's DirichletPartitioner only speeds up flwr-datasets' bookkeeping: the same seed gives the same rows,
    including after redraws for the minimum size (1.0, 55 redraws 3 times) and with self-balancing."""
    import warnings

    import datasets
    from flwr_datasets.partitioner import DirichletPartitioner as FlowerDirichlet

    from fedsim.partitions import DirichletPartitioner

    data = datasets.Dataset.from_dict({"label": np.random.default_rng(1).integers(0, 10, 3000)})
    results = []
    for kind in (FlowerDirichlet, DirichletPartitioner):
        partitioner = kind(30, "label", alpha=alpha, min_partition_size=min_size, self_balancing=balancing,
                           shuffle=shuffle, seed=3)
        partitioner.dataset = data
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results.append([partitioner.load_partition(pid)["label"] for pid in range(30)])
    assert results[0] == results[1]


def test_dirichlet_gives_up_like_flwr_datasets():
    import datasets

    from fedsim.partitions import DirichletPartitioner

    partitioner = DirichletPartitioner(30, "label", alpha=1.0, min_partition_size=60, seed=3)
    partitioner.dataset = datasets.Dataset.from_dict({"label": np.random.default_rng(1).integers(0, 10, 3000)})
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="max number of attempts"):
        partitioner.load_partition(0)
