"""EmbeddingPartitioner: coverage, determinism, the size rules, the alpha limits, clear errors, and the encoders."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from fedsim.config import compose_experiment
from fedsim.data import build_federation, load_data, partition_indices
from fedsim.errors import DataError
from fedsim.partitions import EmbeddingPartitioner, PartitionImpossible
from fedsim.partitions.cluster_mixture import (
    assign_from_clusters,
    draw_mixtures_and_sizes,
    fitted_sizes,
    reference_sizes,
)
from fedsim.partitions.encoders import embed, resolve_encoder


@pytest.fixture(scope="module")
def digits():
    return load_data({"_target_": "fedsim.data.Digits", "test_fraction": 0.2}, seed=0)


def _cluster_shares(partitioner: EmbeddingPartitioner, parts: list[np.ndarray]) -> np.ndarray:
    clusters = partitioner.cluster_of
    counts = np.stack([np.bincount(clusters[rows], minlength=int(clusters.max()) + 1) for rows in parts])
    return counts / counts.sum(1, keepdims=True)


@pytest.mark.parametrize("clients", [5, 10, 30])
def test_partition_covers_every_row_once_and_is_seeded(digits, tmp_path, clients):
    make = lambda seed: EmbeddingPartitioner(clients, alpha=0.5, num_clusters=10, seed=seed, cache_dir=str(tmp_path))  # noqa: E731
    parts = partition_indices(digits.train, make(0))
    joined = np.concatenate(parts)
    assert len(joined) == len(set(joined.tolist())) == len(digits.train)
    assert min(len(rows) for rows in parts) >= 10  # min_partition_size
    again = partition_indices(digits.train, make(0))
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition_indices(digits.train, make(1))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))
    assert len(list(tmp_path.glob("*.npy"))) == 1  # the embedding was computed once and cached


@pytest.mark.parametrize("by", ["embedding", "label"])
def test_small_alpha_gives_near_one_cluster_clients(digits, tmp_path, by):
    partitioner = EmbeddingPartitioner(30, alpha=0.01, num_clusters=5, by=by, seed=0, cache_dir=str(tmp_path))
    shares = _cluster_shares(partitioner, partition_indices(digits.train, partitioner))
    assert np.mean(shares.max(1)) > 0.9


@pytest.mark.parametrize("by", ["embedding", "label"])
def test_large_alpha_approaches_the_global_cluster_mixture(digits, tmp_path, by):
    """Jensen-Shannon divergence of every client's cluster mix to the global one shrinks as alpha grows."""
    divergence = {}
    for alpha in (0.1, 1.0, 1e4):
        partitioner = EmbeddingPartitioner(10, alpha=alpha, by=by, seed=0, cache_dir=str(tmp_path))
        shares = _cluster_shares(partitioner, partition_indices(digits.train, partitioner))
        overall = np.bincount(partitioner.cluster_of) / len(partitioner.cluster_of)
        divergence[alpha] = float(np.mean([jensenshannon(row, overall, base=2) ** 2 for row in shares]))
    assert divergence[0.1] > divergence[1.0] > divergence[1e4]
    assert divergence[1e4] < 0.01 and divergence[0.1] > 0.3


def test_mixtures_follow_the_dirichlet_mean():
    """Statistically, on the mixtures alone: E[P_k] = p, and alpha -> inf puts every client at p."""
    rng = np.random.default_rng(0)
    counts = np.array([400, 300, 200, 100])
    tight, _ = draw_mixtures_and_sizes(counts, 40, alpha=1e5, min_partition_size=1, rng=rng)
    assert np.abs(tight - counts / counts.sum()).max() < 0.02
    loose, _ = draw_mixtures_and_sizes(counts, 400, alpha=1.0, min_partition_size=1, rng=rng)
    assert np.abs(loose - counts / counts.sum()).max() > 0.2
    assert np.abs(loose.mean(0) - counts / counts.sum()).max() < 0.03


def test_reference_rule_is_the_pinv_solve_with_its_acceptance_checks():
    counts = np.array([60.0, 40.0])
    mixtures = np.array([[0.8, 0.2], [0.2, 0.8]])
    # P^T n = N_c: 0.8 a + 0.2 b = 60 and 0.2 a + 0.8 b = 40 give a = 66.67, b = 33.33
    assert reference_sizes(mixtures, counts, 10).tolist() == [66, 33]
    assert reference_sizes(mixtures, counts, 40) is None  # b < the minimum size: redraw
    skewed = np.array([[0.5, 0.5], [0.5, 0.5]])  # singular: pinv splits evenly, 50 + 50
    assert reference_sizes(skewed, counts, 10) is None  # 50 * 0.5 * 2 = 50 > 40 rows of cluster 1: over-subscribed


def test_fit_rule_agrees_with_the_reference_when_that_is_acceptable_and_respects_its_rules_otherwise():
    counts = np.array([60.0, 40.0])
    mixtures = np.array([[0.8, 0.2], [0.2, 0.8]])
    assert np.abs(fitted_sizes(mixtures, counts, 10) - [66, 33]).max() <= 1
    skewed = np.array([[0.5, 0.5], [0.5, 0.5]])
    sizes = fitted_sizes(skewed, counts, 10)
    assert sizes.min() >= 10 and np.all(sizes @ skewed <= counts) and sizes.sum() == 80  # cluster 1 caps at 40 each
    assert abs(int(sizes[0]) - int(sizes[1])) <= 1  # the minimum-norm (even) choice among equally good fits
    assert fitted_sizes(skewed, counts, 41) is None  # 41 * (0.5 + 0.5) > 40: no sizes can avoid over-subscription


@pytest.mark.parametrize("clients", [25, 50, 100])
def test_fit_rule_gives_the_reference_sizes_on_every_draw_the_reference_accepts(clients):
    """10 clusters, 4,000 rows: on each draw the paper's rule accepts, the default rule's sizes are the same, row for
    row (the constrained fit with its evenness slack moved clients by a median 20-62 rows there)."""
    rng = np.random.default_rng(clients)
    counts = rng.multinomial(4000 - 10 * 150, np.full(10, 0.1)) + 150
    accepted = 0
    for alpha in (0.1, 1.0):
        for _ in range(12):
            mixtures = rng.dirichlet(alpha * counts / counts.sum(), size=clients)
            reference = reference_sizes(mixtures, counts, 10)
            if reference is not None:
                accepted += 1
                assert np.array_equal(fitted_sizes(mixtures, counts, 10), reference)
    assert accepted >= 5


def test_fit_rule_accepts_draws_the_reference_rule_rejects():
    """10 clients over 10 clusters: the reference's pinv sizes are almost always negative somewhere."""
    counts = np.full(10, 144)
    rng = np.random.default_rng(0)
    draws = [rng.dirichlet(np.full(10, 0.5)) for _ in range(50 * 10)]
    mixtures = [np.array(draws[i : i + 10]) for i in range(0, len(draws), 10)]
    reference = sum(reference_sizes(m, counts, 10) is not None for m in mixtures)
    fitted = sum(fitted_sizes(m, counts, 10) is not None for m in mixtures)
    assert reference <= 5 and fitted == 50


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


@pytest.mark.parametrize("rule", ["fit", "reference"])
def test_impossible_settings_fail_with_advice(rule):
    with pytest.raises(PartitionImpossible, match="larger alpha, fewer clients"):
        draw_mixtures_and_sizes(np.array([10, 10]), 10, alpha=1.0, min_partition_size=50, rng=np.random.default_rng(0),
                                size_rule=rule, max_retries=5)


def test_impossible_embedding_partition_is_one_line_from_the_config():
    experiment = compose_experiment(["partition=embedding", "num_clients=100", "partition.min_partition_size=20"])
    with pytest.raises(DataError) as raised:
        build_federation(experiment)
    assert "larger alpha" in str(raised.value) and "\n" not in str(raised.value)


def test_config_partition_reports_clusters():
    federation = build_federation(compose_experiment(["partition=embedding", "partition.alpha=0.1"]))
    assert federation.cluster_counts.shape == (10, 10)
    assert federation.cluster_counts.sum() == sum(len(rows) for rows in federation.client_indices) == 1437
    by_label = build_federation(compose_experiment(["partition=embedding", "partition.by=label"]))
    assert by_label.cluster_counts is None  # its clusters are the labels, reported already


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
