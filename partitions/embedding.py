"""Embedding-based heterogeneity (Borazjani, Abdisarabshali, Khosravan, Hosseinalipour, arXiv 2503.14553).

Reference: `somerandomusernamelab/task-perspective-het` (k-means on embeddings, then `SimpleNetwork.distribute_data`).
"""

from __future__ import annotations

from numbers import Integral
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.decomposition import PCA

from fedsim.protocol.constraints import Interval, Options

from .base import PrecomputedPartitioner
from .cluster_mixture import MIXTURE_CONSTRAINTS, SIZE_RULES, assign_from_clusters, draw_mixtures_and_sizes
from .encoders import EncoderSpec, EncoderSpecs, embed

BY_MODES = ("embedding", "label")
PCA_COMPONENTS = [Interval(Integral, 1, None, closed="left"), None]  # None keeps every dimension


class EmbeddingPartitioner(PrecomputedPartitioner):
    """Clients as Dirichlet mixtures of embedding clusters, not of labels.

    Embed every sample with `encoder` (see `partitions.encoders`; `pca` on raw inputs by default), reduce with PCA to
    `pca_components` (None keeps all), cluster with k-means++ into `num_clusters` (mini-batch k-means above
    `minibatch_threshold` samples), then draw each client's cluster mixture from Dirichlet(alpha * p) and size the
    clients by `size_rule` (see `partitions.cluster_mixture`), redrawing at most `max_retries` times.
    `by="label"` runs the same procedure with the labels as the clusters, for side-by-side comparisons at one alpha.

    Deviations from the reference, both switchable: `size_rule="fit"` (the reference's sizes on every draw it
    accepts; constrained least squares instead of a redraw on the draws it rejects; "reference" is the paper's
    pinv-and-redraw rule), and `keep_leftovers=True` (rows no client drew are spread over the clients in
    proportion to what they drew, so the partition covers the data set; False drops them as the reference does).
    The reference's minimum client size is 128; here `min_partition_size` defaults to 10 for small data sets.
    After partitioning, `cluster_of` holds each row's cluster (labels under `by="label"`).
    """

    _parameter_constraints = {
        **MIXTURE_CONSTRAINTS,
        "num_clusters": [Interval(Integral, 1, None, closed="left")],
        "encoder": [EncoderSpecs()],
        "pca_components": PCA_COMPONENTS,
        "by": [Options(BY_MODES)],
    }

    def __init__(
        self,
        num_partitions: int,
        alpha: float,
        num_clusters: int = 10,
        encoder: EncoderSpec = "pca",
        pca_components: int | None = 50,
        by: str = "embedding",
        partition_by: str = "label",
        feature_column: str | None = None,
        min_partition_size: int = 10,
        size_rule: str = "fit",
        max_retries: int = 100,
        keep_leftovers: bool = True,
        minibatch_threshold: int = 20_000,
        cache_dir: str | None = None,
        seed: int | None = 42,
    ) -> None:
        super().__init__(num_partitions)
        if by not in BY_MODES:
            raise ValueError(f"by={by!r}: one of {', '.join(BY_MODES)}")
        if size_rule not in SIZE_RULES:
            raise ValueError(f"size_rule={size_rule!r}: one of {', '.join(SIZE_RULES)}")
        if alpha <= 0 or num_partitions < 1 or num_clusters < 1:
            raise ValueError("EmbeddingPartitioner needs alpha > 0, num_partitions >= 1 and num_clusters >= 1")
        self.alpha, self.num_clusters, self.encoder, self.pca_components = alpha, num_clusters, encoder, pca_components
        self.by, self.partition_by, self.feature_column = by, partition_by, feature_column
        self.min_partition_size, self.size_rule, self.max_retries = min_partition_size, size_rule, max_retries
        self.keep_leftovers, self.minibatch_threshold = keep_leftovers, minibatch_threshold
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.seed = seed
        self.cluster_of: np.ndarray | None = None

    @property
    def embedding_clusters(self) -> np.ndarray | None:
        """Each row's embedding cluster, for the heterogeneity report; None under `by="label"`, whose clusters are the
        labels (reported already) or before partitioning."""
        return self.cluster_of if self.by == "embedding" else None

    def _compute_partition_indices(self) -> list[np.ndarray]:
        self.cluster_of = self._clusters()
        rng = np.random.default_rng(self.seed)
        counts = np.bincount(self.cluster_of, minlength=int(self.cluster_of.max()) + 1)
        mixtures, sizes = draw_mixtures_and_sizes(
            counts, self.num_partitions, self.alpha, self.min_partition_size, rng, self.size_rule, self.max_retries
        )
        return assign_from_clusters(self.cluster_of, mixtures, sizes, rng, self.keep_leftovers)

    def _clusters(self) -> np.ndarray:
        if self.by == "label":
            _, codes = np.unique(np.asarray(self.dataset.with_format("arrow")[self.partition_by]), return_inverse=True)
            return codes.astype(np.int64)
        vectors = embed(self.dataset, self.encoder, self.feature_column, self.cache_dir)
        return cluster_embeddings(vectors, self.num_clusters, self.pca_components, self.seed, self.minibatch_threshold)


def reduce_dimensions(vectors: np.ndarray, components: int | None, seed: int | None,
                      max_fit_rows: int = 100_000) -> np.ndarray:
    """Centre and project onto the first `components` principal axes (fitted on at most `max_fit_rows` rows)."""
    data = vectors.reshape(len(vectors), -1).astype(np.float32)
    if not components or components >= min(data.shape):
        return data - data.mean(0)
    fit_rows = data
    if len(data) > max_fit_rows:
        fit_rows = data[np.random.default_rng(seed).choice(len(data), max_fit_rows, replace=False)]
    pca = PCA(n_components=components, random_state=seed, svd_solver="randomized").fit(fit_rows)
    return pca.transform(data).astype(np.float32)


def cluster_embeddings(vectors: np.ndarray, num_clusters: int, pca_components: int | None, seed: int | None,
                       minibatch_threshold: int = 20_000) -> np.ndarray:
    """PCA (optional) then k-means++ cluster ids; mini-batch k-means for large inputs."""
    if num_clusters > len(vectors):
        raise ValueError(f"num_clusters={num_clusters} is more than the {len(vectors)} samples")
    data = reduce_dimensions(vectors, pca_components, seed)
    if len(data) > minibatch_threshold:
        model = MiniBatchKMeans(n_clusters=num_clusters, random_state=seed, batch_size=4096, n_init=3)
    else:
        model = KMeans(n_clusters=num_clusters, init="k-means++", random_state=seed, n_init=3)
    return model.fit_predict(data).astype(np.int64)
