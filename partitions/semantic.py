"""Semantic partitioning (Yuan, Morningstar, Ning, Singhal, ICLR 2022, "What do we mean by generalization in FL?").

Reference: `google-research/federated:generalization/synthesization/gmm_embedding.py` (ported to PyTorch in FL-bench
as `data/utils/schemes/semantic.py`).
"""

from __future__ import annotations

from numbers import Real
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.mixture import GaussianMixture

from fedsim.protocol.constraints import Interval, Options
from fedsim.protocol.errors import PartitionImpossible

from .base import PrecomputedPartitioner
from .embedding import PCA_COMPONENTS, reduce_dimensions
from .encoders import EncoderSpec, EncoderSpecs, embed

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")  # scikit-learn's GaussianMixture


def full_covariances(mixture: GaussianMixture) -> np.ndarray:
    """Every component's covariance as a d x d matrix, whatever `covariance_type` the mixture was fitted with."""
    count, dim = mixture.means_.shape
    kind, covariances = mixture.covariance_type, mixture.covariances_
    if kind == "full":
        return covariances
    if kind == "tied":
        return np.broadcast_to(covariances, (count, dim, dim)).copy()
    if kind == "diag":
        return np.stack([np.diag(row) for row in covariances])
    return np.stack([np.eye(dim) * value for value in covariances])  # spherical


def gaussian_kl(means_a: np.ndarray, covs_a: np.ndarray, means_b: np.ndarray, covs_b: np.ndarray) -> np.ndarray:
    """Matrix of KL(N(mu_i, S_i) || N(mu'_j, S'_j)) for components i of a and j of b, through Cholesky factors.

    KL = 1/2 [tr(S'^-1 S) + (mu' - mu)^T S'^-1 (mu' - mu) - d + ln det S' - ln det S].
    """
    dim = means_a.shape[1]
    chol_a, chol_b = np.linalg.cholesky(covs_a), np.linalg.cholesky(covs_b)
    logdet_a = 2 * np.log(np.diagonal(chol_a, axis1=1, axis2=2)).sum(1)
    logdet_b = 2 * np.log(np.diagonal(chol_b, axis1=1, axis2=2)).sum(1)
    eye = np.eye(dim)
    inv_chol_b = np.stack([np.linalg.solve(factor, eye) for factor in chol_b])  # L'^-1, so S'^-1 = L'^-T L'^-1
    # tr(S'_j^-1 S_i) = ||L'_j^-1 L_i||_F^2
    trace = np.einsum("jab,ibc->ijac", inv_chol_b, chol_a)
    trace = (trace**2).sum((2, 3))
    difference = means_b[None, :, :] - means_a[:, None, :]  # i x j x d
    mahalanobis = (np.einsum("jab,ijb->ija", inv_chol_b, difference) ** 2).sum(2)
    return 0.5 * (trace + mahalanobis - dim + logdet_b[None, :] - logdet_a[:, None])


def fill_empty_components(log_likelihood: np.ndarray) -> np.ndarray:
    """Most likely component per row, then each empty component takes its most likely row from a component that
    has rows to spare, so every component (every client, for this label) gets at least one row."""
    assignment = log_likelihood.argmax(1)
    counts = np.bincount(assignment, minlength=log_likelihood.shape[1])
    for component in np.flatnonzero(counts == 0):
        spare = counts[assignment] > 1
        candidate = int(np.argmax(np.where(spare, log_likelihood[:, component], -np.inf)))
        counts[assignment[candidate]] -= 1
        assignment[candidate] = component
        counts[component] = 1
    return assignment


class SemanticPartitioner(PrecomputedPartitioner):
    """Every client keeps every label; clients differ in which region of feature space they hold.

    Embed (`encoder`, `pca` on raw inputs by default; the paper uses an ImageNet EfficientNet, e.g.
    `timm:efficientnet_b3`), centre and reduce with PCA to `pca_components` (the paper's configs use 256 on large data
    sets), then for each label fit a Gaussian mixture with one component per client (`reg_covar` 1e-4, `max_iter` 100,
    fitted on at most `max_fit_samples` rows of the label) and assign each row to its most likely component. Labels
    are then matched progressively in a random order: the components of the next label are matched to those of the
    last matched label by the Hungarian algorithm on the Gaussian KL divergence, and inherit their clients.

    Components start from k-means (`init_params="kmeans"`, Google's choice for CIFAR); FL-bench's default "random"
    start leaves the mixture near its initial state on small data sets (digits: clients then differ little more than
    under an IID split), so it is an option rather than the default.

    Deviation: a component that no row prefers takes its most likely row from a larger component, so every client
    holds every label (the reference leaves such a client without the label).
    """

    _parameter_constraints = {
        "encoder": [EncoderSpecs()],
        "pca_components": PCA_COMPONENTS,
        "covariance_type": [Options(COVARIANCE_TYPES)],
        "reg_covar": [Interval(Real, 0, None, closed="neither")],
    }

    def __init__(
        self,
        num_partitions: int,
        encoder: EncoderSpec = "pca",
        pca_components: int | None = 32,
        partition_by: str = "label",
        feature_column: str | None = None,
        covariance_type: str = "full",
        reg_covar: float = 1e-4,
        max_iter: int = 100,
        init_params: str = "kmeans",
        max_fit_samples: int = 10_000,
        cache_dir: str | None = None,
        seed: int | None = 42,
    ) -> None:
        super().__init__(num_partitions)
        if num_partitions < 1:
            raise ValueError("SemanticPartitioner needs num_partitions >= 1")
        self.encoder, self.pca_components, self.partition_by = encoder, pca_components, partition_by
        self.feature_column, self.covariance_type, self.reg_covar = feature_column, covariance_type, reg_covar
        self.max_iter, self.init_params, self.max_fit_samples = max_iter, init_params, max_fit_samples
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.seed = seed

    def _compute_partition_indices(self) -> list[np.ndarray]:
        labels = np.asarray(self.dataset.with_format("arrow")[self.partition_by])
        classes, label_codes = np.unique(labels, return_inverse=True)
        sizes = np.bincount(label_codes)
        if sizes.min() < self.num_partitions:
            raise PartitionImpossible(
                f"label {classes[sizes.argmin()]!r} has {sizes.min()} samples, fewer than the {self.num_partitions} "
                "clients the semantic partition gives it to; use fewer clients"
            )
        vectors = reduce_dimensions(embed(self.dataset, self.encoder, self.feature_column, self.cache_dir),
                                    self.pca_components, self.seed)
        rng = np.random.default_rng(self.seed)
        rows_of, fits = [], []
        for code in range(len(classes)):
            rows = np.flatnonzero(label_codes == code)
            mixture, component = self._fit_label(vectors[rows], rng)
            rows_of.append([rows[component == k] for k in range(self.num_partitions)])
            fits.append((mixture.means_, full_covariances(mixture)))
        parts: list[list[np.ndarray]] = [[] for _ in range(self.num_partitions)]
        for code, owner in self._match(fits, rng).items():
            for component, client in enumerate(owner):
                parts[client].append(rows_of[code][component])
        return [np.sort(np.concatenate(chunks)) for chunks in parts]

    def _fit_label(self, points: np.ndarray, rng: np.random.Generator) -> tuple[GaussianMixture, np.ndarray]:
        points = points.astype(np.float64)  # float32 likelihoods underflow to 0 far from a component
        fit_points = points
        if len(points) > self.max_fit_samples:
            fit_points = points[rng.choice(len(points), self.max_fit_samples, replace=False)]
        mixture = GaussianMixture(
            n_components=self.num_partitions,
            covariance_type=self.covariance_type,
            reg_covar=self.reg_covar,
            max_iter=self.max_iter,
            init_params=self.init_params,
            random_state=int(rng.integers(2**31 - 1)),
        ).fit(fit_points)
        return mixture, fill_empty_components(np.log(np.maximum(mixture.predict_proba(points), 1e-300)))

    def _match(self, fits: list[tuple[np.ndarray, np.ndarray]], rng: np.random.Generator) -> dict[int, np.ndarray]:
        """Per label, the client of each of its components: progressive Hungarian matching on Gaussian KL."""
        order = rng.permutation(len(fits))
        owner = {int(order[0]): np.arange(self.num_partitions)}
        previous = int(order[0])
        for code in order[1:]:
            code = int(code)
            cost = gaussian_kl(*fits[previous], *fits[code])
            rows, columns = linear_sum_assignment(cost)
            clients = np.empty(self.num_partitions, dtype=np.int64)
            clients[columns] = owner[previous][rows]
            owner[code] = clients
            previous = code
        return owner
