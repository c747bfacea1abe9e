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
    federation = build_federation(compose_experiment(["partition=classes_per_client",
                                                      "partition.num_classes_per_partition=3"]))
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
    experiment = compose_experiment(["partition=quantity", "partition.alpha=0.01", "num_clients=100",
                                     "partition.min_partition_size=12"])
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


# --- NIID-2 (FedDisco): the reference's shard rule ----------------------------------------------------------------


def _niid2(labels: np.ndarray, clients: int = 6, iid: int = 1, **kwargs) -> list[np.ndarray]:
    import datasets

    from fedsim.partitions import LabelShardsWithIidPartitioner

    partitioner = LabelShardsWithIidPartitioner(clients, num_iid_partitions=iid, seed=0, **kwargs)
    partitioner.dataset = datasets.Dataset.from_dict({"label": labels})
    return partitioner.all_partition_indices()


def test_niid2_on_cifar10_like_labels_is_the_references():
    """50,000 rows, 5,000 a class, 6 clients: shards of int(50000 / 10 / 6) = 833 rows. Client i < 5 holds 5 shards
    (4,165 rows) of classes 2i and 2i+1 and nothing else; client 5 holds 833 rows of every class; 2 rows a class
    belong to no one (the reference's utils.partition_data, noniid-2)."""
    labels = np.random.default_rng(1).permutation(np.repeat(np.arange(10), 5000))
    parts = _niid2(labels)
    counts = np.stack([np.bincount(labels[rows], minlength=10) for rows in parts])
    for client in range(5):
        expected = np.zeros(10, dtype=np.int64)
        expected[[2 * client, 2 * client + 1]] = 4165
        assert counts[client].tolist() == expected.tolist()
    assert counts[5].tolist() == [833] * 10
    joined = np.concatenate(parts)
    assert len(joined) == len(set(joined.tolist())) == 50000 - 20


def test_niid2_on_unequal_classes_never_gives_a_stray_class():
    """Digits' training classes (139-146 rows; shard 23): each skewed client holds exactly its two classes, the
    uniform client 23 rows of every class. A class that runs short (class 9 cut to 120 rows) shortens the uniform
    client's share of it, never borrowing from another class; no row goes to two clients."""
    sizes = np.array([142, 146, 142, 146, 145, 146, 145, 143, 139, 144])
    labels = np.random.default_rng(2).permutation(np.repeat(np.arange(10), sizes))
    parts = _niid2(labels)
    for client in range(5):
        assert np.bincount(labels[parts[client]], minlength=10)[[2 * client, 2 * client + 1]].tolist() == [115, 115]
        assert len(parts[client]) == 230  # nothing else
    assert np.bincount(labels[parts[5]], minlength=10).tolist() == [23] * 10
    short = np.random.default_rng(3).permutation(np.repeat(np.arange(10), np.append(sizes[:9], 120)))
    parts = _niid2(short)  # 1,413 rows: shard 23 still; class 9 gives 115 rows to client 4 and 5 to client 5
    assert np.bincount(short[parts[5]], minlength=10).tolist() == [23] * 9 + [5]
    assert set(short[parts[4]].tolist()) == {8, 9}
    joined = np.concatenate(parts)
    assert len(joined) == len(set(joined.tolist()))


def test_niid2_beyond_one_cycle_of_classes_and_its_errors():
    """11 clients, 10 skewed: clients 5-9 take the next 5 shards of the same classes; the uniform shard follows."""
    labels = np.repeat(np.arange(10), 110)
    parts = _niid2(labels, clients=11)
    assert [sorted(set(labels[parts[c]].tolist())) for c in (0, 5, 9)] == [[0, 1], [0, 1], [8, 9]]
    assert np.bincount(labels[parts[10]], minlength=10).tolist() == [10] * 10
    assert len(set(np.concatenate(parts).tolist())) == 1100
    with pytest.raises(ValueError, match="shards_per_partition=11"):
        _niid2(labels, shards_per_partition=11)
    with pytest.raises(ValueError, match="fewer clients"):
        _niid2(np.arange(10), clients=6)


@pytest.mark.parametrize("name", ["iid", "natural", "pathological", "shard", "classes_per_client", "dirichlet",
                                  "quantity", "niid2", "embedding", "semantic"])
def test_every_configured_partitioner_declares_constraints_on_its_own_arguments(name):
    """flwr-datasets' partitioners through the table in partitions/flower_constraints.py, fedsim's on the class; a
    declared name that is no argument of the class would never be checked."""
    import inspect

    from fedsim.build import locate
    from fedsim.partitions.flower_constraints import partitioner_constraints

    cls = locate(compose_experiment([f"partition={name}"])["partition"]["_target_"])
    constraints = partitioner_constraints(cls)
    assert set(constraints) <= set(inspect.signature(cls.__init__).parameters)
    assert constraints or name == "iid"
