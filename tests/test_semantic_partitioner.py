"""SemanticPartitioner: Gaussian KL by hand, every client keeps every label, and clients differ in feature space."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.config import compose_experiment
from fedsim.data import build_federation, load_data, partition_indices
from fedsim.errors import DataError
from fedsim.partitions import IidPartitioner, SemanticPartitioner
from fedsim.partitions.embedding import reduce_dimensions
from fedsim.partitions.encoders import embed
from fedsim.partitions.semantic import fill_empty_components, gaussian_kl


@pytest.fixture(scope="module")
def digits():
    return load_data({"_target_": "fedsim.data.Digits", "test_fraction": 0.2}, seed=0)


def test_gaussian_kl_by_hand():
    # 1-d: KL(N(0, 1) || N(1, 2)) = 1/2 (1/2 + 1/2 - 1 + ln 2) = ln(2) / 2
    kl = gaussian_kl(np.array([[0.0]]), np.array([[[1.0]]]), np.array([[1.0]]), np.array([[[2.0]]]))
    assert kl[0, 0] == pytest.approx(np.log(2) / 2)
    rng = np.random.default_rng(0)
    factors = rng.normal(size=(4, 3, 3))
    covs = factors @ factors.transpose(0, 2, 1) + np.eye(3)
    means = rng.normal(size=(4, 3))
    matrix = gaussian_kl(means[:2], covs[:2], means[2:], covs[2:])
    for i in range(2):
        for j in range(2):
            inverse = np.linalg.inv(covs[2 + j])
            diff = means[2 + j] - means[i]
            direct = 0.5 * (np.trace(inverse @ covs[i]) + diff @ inverse @ diff - 3
                            + np.log(np.linalg.det(covs[2 + j]) / np.linalg.det(covs[i])))
            assert matrix[i, j] == pytest.approx(direct)
    assert np.allclose(np.diag(gaussian_kl(means, covs, means, covs)), 0, atol=1e-9)


def test_empty_components_take_a_row_from_a_larger_one():
    likelihood = np.array([[0.9, 0.1, 0.0001], [0.8, 0.15, 0.05], [0.7, 0.29, 0.01], [0.1, 0.9, 0.0]])
    log_likelihood = np.log(likelihood + 1e-12)
    assignment = fill_empty_components(log_likelihood)
    assert sorted(set(assignment.tolist())) == [0, 1, 2]
    assert assignment[1] == 2  # the row that likes component 2 most


def _between_client_share(vectors: np.ndarray, labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Per label, the share of feature variance explained by which client holds a row (0 for an IID split)."""
    client = np.empty(len(labels), dtype=np.int64)
    for k, rows in enumerate(parts):
        client[rows] = k
    shares = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        points, owners = vectors[rows], client[rows]
        total = ((points - points.mean(0)) ** 2).sum()
        between = sum(((points[owners == k].mean(0) - points.mean(0)) ** 2).sum() * (owners == k).sum()
                      for k in np.unique(owners))
        shares.append(between / total)
    return float(np.mean(shares))


def test_every_client_keeps_every_label_and_clients_differ_in_feature_space(digits, tmp_path):
    labels = digits.train_arrays.y.numpy()
    partitioner = SemanticPartitioner(10, seed=0, cache_dir=str(tmp_path))
    parts = partition_indices(digits.train, partitioner)
    joined = np.concatenate(parts)
    assert len(joined) == len(set(joined.tolist())) == len(digits.train)
    assert all(len(np.unique(labels[rows])) == 10 for rows in parts)
    again = partition_indices(digits.train, SemanticPartitioner(10, seed=0, cache_dir=str(tmp_path)))
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    vectors = reduce_dimensions(embed(digits.train, "pca", cache_dir=tmp_path), 32, 0)
    iid = partition_indices(digits.train, IidPartitioner(10))
    semantic_share = _between_client_share(vectors, labels, parts)
    iid_share = _between_client_share(vectors, labels, iid)
    assert iid_share < 0.1 < 0.3 < semantic_share  # measured: 0.06 vs 0.56


def test_matching_pairs_similar_components_across_labels():
    """Two labels with the same two well-separated blobs: the matching must give each client one blob of each."""
    import datasets

    rng = np.random.default_rng(0)
    blobs = np.concatenate([rng.normal(-5, 0.3, (50, 2)), rng.normal(5, 0.3, (50, 2))] * 2)
    labels = np.repeat([0, 1], 100)
    data = datasets.Dataset.from_dict({"x": blobs.astype(np.float32), "label": labels})
    parts = partition_indices(data, SemanticPartitioner(2, pca_components=None, seed=3))
    for rows in parts:
        assert len(set(np.sign(blobs[rows, 0]).tolist())) == 1  # one blob per client, across both labels
        assert sorted(np.bincount(labels[rows]).tolist()) == [50, 50]


def test_more_clients_than_a_label_has_samples_is_one_line():
    with pytest.raises(DataError, match="fewer than the 300 clients"):
        build_federation(compose_experiment(["partition=semantic", "num_clients=300"]))
