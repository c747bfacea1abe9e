"""EmbeddingPartitioner groundwork (issue 4, in progress): coverage, determinism, the alpha limits, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.data import load_data, partition_indices
from fedsim.partitions.embedding import (
    EmbeddingPartitioner,
    PartitionImpossible,
    assign_from_clusters,
    cluster_mixture_sizes,
)
from fedsim.partitions.encoders import embed, resolve_encoder


@pytest.fixture(scope="module")
def digits():
    return load_data({"name": "digits", "source": "builtin", "test_fraction": 0.2}, seed=0)


def _entropy(counts: np.ndarray) -> float:
    shares = counts / counts.sum()
    shares = shares[shares > 0]
    return float(-(shares * np.log(shares)).sum())


def test_partition_covers_every_row_once_and_is_seeded(digits, tmp_path):
    make = lambda seed: EmbeddingPartitioner(30, alpha=0.5, num_clusters=5, seed=seed, cache_dir=str(tmp_path))  # noqa: E731
    parts = partition_indices(digits.train, make(0))
    joined = np.concatenate(parts)
    assert len(joined) == len(set(joined.tolist())) == len(digits.train)
    again = partition_indices(digits.train, make(0))
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition_indices(digits.train, make(1))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))
    assert len(list(tmp_path.glob("*.npy"))) == 1  # the embedding was computed once and cached


@pytest.mark.parametrize("by", ["embedding", "label"])
def test_small_alpha_gives_near_one_cluster_clients(digits, tmp_path, by):
    partitioner = EmbeddingPartitioner(30, alpha=0.01, num_clusters=5, by=by, seed=0, cache_dir=str(tmp_path))
    parts = partition_indices(digits.train, partitioner)
    clusters = partitioner.cluster_of
    num = int(clusters.max()) + 1
    dominant = [np.bincount(clusters[rows], minlength=num).max() / len(rows) for rows in parts]
    assert np.mean(dominant) > 0.9


def test_large_alpha_approaches_the_global_cluster_mixture():
    """Statistically, on the mixtures alone: with alpha -> inf every client's mixture is the global p."""
    rng = np.random.default_rng(0)
    counts = np.array([400, 300, 200, 100])
    mixtures, _ = cluster_mixture_sizes(counts, 40, alpha=1e5, min_partition_size=1, rng=rng, max_retries=1000)
    assert np.abs(mixtures - counts / counts.sum()).max() < 0.02
    loose, _ = cluster_mixture_sizes(counts, 40, alpha=1.0, min_partition_size=1, rng=rng, max_retries=1000)
    assert np.abs(loose - counts / counts.sum()).max() > 0.2


def test_assignment_keeps_or_drops_leftovers():
    rng = np.random.default_rng(0)
    cluster_of = np.repeat([0, 1], [50, 50])
    mixtures = np.array([[0.9, 0.1], [0.2, 0.8]])
    sizes = np.array([40, 40])  # client 0 draws 36 + 4, client 1 draws 8 + 32: 44 of cluster 0 and 36 of cluster 1
    dropped = assign_from_clusters(cluster_of, mixtures, sizes, rng, keep_leftovers=False)
    assert [len(p) for p in dropped] == [36 + 4, 8 + 32]
    assert sum(int((cluster_of[p] == 0).sum()) for p in dropped) == 44  # 6 rows of cluster 0 dropped
    kept = assign_from_clusters(cluster_of, mixtures, sizes, rng, keep_leftovers=True)
    assert sum(len(p) for p in kept) == 100 and len(set(np.concatenate(kept).tolist())) == 100


def test_impossible_settings_fail_with_advice():
    with pytest.raises(PartitionImpossible, match="larger alpha, fewer clients"):
        cluster_mixture_sizes(np.array([10, 10]), 10, alpha=1.0, min_partition_size=50, rng=np.random.default_rng(0), max_retries=5)


def test_encoders(digits, tmp_path):
    name, function = resolve_encoder("pca")
    assert name == "pca" and function(np.zeros((3, 1, 8, 8))).shape == (3, 64)
    assert embed(digits.train, "pca", cache_dir=tmp_path).shape == (len(digits.train), 64)
    custom = embed(digits.train, lambda x: np.asarray(x)[:, :2], cache_dir=tmp_path)
    assert custom.shape == (len(digits.train), 2)
    with pytest.raises(ValueError, match="encoder="):
        resolve_encoder("clip")
    with pytest.raises(RuntimeError, match="could not be loaded"):  # no torchvision or weights offline
        resolve_encoder("torchvision:resnet18")[1](np.zeros((1, 3, 8, 8), dtype=np.float32))


def test_trained_fedsim_model_as_encoder(run_quietly, digits, tmp_path):
    """`model:<run folder>` embeds with the run's final model: the input of its last Linear layer."""
    _, run_dir = run_quietly("num_rounds=2", name="trained")
    assert (run_dir / "model.pt").is_file()
    vectors = embed(digits.train, f"model:{run_dir}", cache_dir=tmp_path)
    assert vectors.shape == (len(digits.train), 200)  # the MLP's last hidden layer
    assert (vectors >= 0).all() and vectors.std() > 0  # post-ReLU activations that vary
