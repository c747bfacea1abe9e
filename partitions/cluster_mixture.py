"""Clients as Dirichlet mixtures over clusters: draw the mixtures, size the clients, hand out the rows.

This is the distribution step of Borazjani et al. (arXiv 2503.14553; reference `SimpleNetwork.distribute_data` in
`somerandomusernamelab/task-perspective-het`): with cluster sizes N_c and p_c = N_c / N,

    P_k ~ Dirichlet(alpha * p) for each client k          (P is clients x clusters)
    n   = least-squares solution of  P^T n = N_c           (client sizes)
    client k takes int(n_k P_kc) rows of cluster c

and a draw is accepted only when every n_k >= the minimum size, sum n_k <= N and no cluster is over-subscribed
(sum_k n_k P_kc <= N_c); otherwise P is redrawn.

Two size rules:
- `reference`: n = int(pinv(P^T) N_c), accepted or redrawn as above. Its unconstrained solve mostly yields negative
  sizes when there are about as many clients as clusters (measured over 200 draws each, 10 clusters: at most 2% of
  draws accepted for 10 clients at any alpha; 7-47% for 25 clients; 32-100% for 100 clients, fewer at larger alpha).
- `fit` (default; a documented deviation): on a draw whose reference sizes are acceptable, exactly those sizes (so
  the two rules give the same clients for that draw). Otherwise, where the reference would redraw, the same
  least-squares solve with the acceptance rules as constraints, min ||P^T n - N_c||^2 subject to n_k >= minimum size
  and P^T n <= N_c; then, among sizes that use at most 1% less of the data than that solution, the most even ones
  (least variance of n). A draw is redrawn only when even the minimum sizes over-subscribe a cluster
  (min_size * sum_k P_kc > N_c), which no sizes can fix. Applying the constrained fit to every draw would not give
  the reference's sizes: its 1% evenness slack moved clients by a median 20-62 rows (up to 543; 3.4-6.2% of the data
  in total) on draws the reference accepts (10 clusters, 4,000 rows, 25-100 clients).
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from scipy.optimize import minimize

from fedsim.protocol.constraints import Interval, Options
from fedsim.protocol.errors import PartitionImpossible

from .base import largest_remainder

SIZE_RULES = ("fit", "reference")
COVERAGE_SLACK = 0.01  # the share of the data the fit may leave unused to make client sizes more even
# The parameters of `draw_mixtures_and_sizes` as a partitioner built on it takes them (`_parameter_constraints`).
MIXTURE_CONSTRAINTS = {
    "alpha": [Interval(Real, 0, None, closed="neither")],
    "min_partition_size": [Interval(Integral, 0, None, closed="left")],
    "size_rule": [Options(SIZE_RULES)],
    "max_retries": [Interval(Integral, 1, None, closed="left")],
}


def reference_sizes(mixtures: np.ndarray, cluster_sizes: np.ndarray, min_size: int) -> np.ndarray | None:
    """The reference's sizes int(pinv(P^T) N_c), or None when they break its acceptance rules."""
    sizes = (np.linalg.pinv(mixtures.T) @ cluster_sizes).astype(np.int64)
    if sizes.min() < min_size or sizes.sum() > cluster_sizes.sum() or np.any(sizes @ mixtures > cluster_sizes + 1e-9):
        return None
    return sizes


def fitted_sizes(mixtures: np.ndarray, cluster_sizes: np.ndarray, min_size: int) -> np.ndarray | None:
    """The reference's sizes when acceptable, else least-squares sizes under the acceptance rules (see the module
    docstring); None when none exist."""
    exact = reference_sizes(mixtures, cluster_sizes, min_size)
    if exact is not None:
        return exact
    total = float(cluster_sizes.sum())
    target, lowest, coverage = cluster_sizes / total, min_size / total, mixtures.T
    if np.any(lowest * coverage.sum(1) > target + 1e-12):
        return None
    bounds = [(lowest, None)] * len(mixtures)
    capacity = {"type": "ineq", "fun": lambda x: target - coverage @ x, "jac": lambda x: -coverage}
    options = {"maxiter": 500, "ftol": 1e-14}

    def residual(x: np.ndarray) -> float:
        return float(((coverage @ x - target) ** 2).sum())

    def residual_gradient(x: np.ndarray) -> np.ndarray:
        return 2 * coverage.T @ (coverage @ x - target)

    start = np.full(len(mixtures), lowest)
    best = minimize(residual, start, jac=residual_gradient, method="SLSQP", bounds=bounds, constraints=[capacity],
                    options=options)
    used = float(best.x.sum())
    enough = {"type": "ineq", "fun": lambda x: x.sum() - (used - COVERAGE_SLACK), "jac": lambda x: np.ones_like(x)}
    even = minimize(lambda x: float(((x - x.mean()) ** 2).sum()), best.x, jac=lambda x: 2 * (x - x.mean()),
                    method="SLSQP", bounds=bounds, constraints=[capacity, enough], options=options)
    chosen = even.x if even.success else best.x
    sizes = np.maximum(np.floor(chosen * total + 1e-6).astype(np.int64), min_size)
    if np.any(sizes @ mixtures > cluster_sizes + 1e-6):  # the solver stopped outside the constraints
        return None
    return sizes


def draw_mixtures_and_sizes(
    cluster_sizes: np.ndarray,
    num_partitions: int,
    alpha: float,
    min_partition_size: int,
    rng: np.random.Generator,
    size_rule: str = "fit",
    max_retries: int = 100,
) -> tuple[np.ndarray, np.ndarray]:
    """Client mixtures P (clients x clusters) ~ Dirichlet(alpha * p) and sizes n by `size_rule`, redrawn as needed."""
    if size_rule not in SIZE_RULES:
        raise ValueError(f"size_rule={size_rule!r}: one of {', '.join(SIZE_RULES)}")
    counts = np.asarray(cluster_sizes, dtype=np.float64)
    concentration = np.maximum(alpha * counts / counts.sum(), 1e-12)
    solve = fitted_sizes if size_rule == "fit" else reference_sizes
    for _ in range(max_retries):
        mixtures = rng.dirichlet(concentration, size=num_partitions)
        sizes = solve(mixtures, counts, min_partition_size)
        if sizes is not None:
            return mixtures, sizes
    raise PartitionImpossible(
        f"no Dirichlet(alpha={alpha}) draw gave {num_partitions} clients of at least {min_partition_size} samples "
        f"without over-subscribing one of the {len(counts)} clusters in {max_retries} tries ({size_rule} size rule); "
        "use a larger alpha, fewer clients, fewer clusters or a smaller min_partition_size"
    )


def assign_from_clusters(
    cluster_of: np.ndarray, mixtures: np.ndarray, sizes: np.ndarray, rng: np.random.Generator, keep_leftovers: bool
) -> list[np.ndarray]:
    """Client k draws int(n_k P_kc) rows of cluster c without replacement (the reference).

    With `keep_leftovers`, each cluster's rows are instead split over clients in proportion to n_k P_kc (largest
    remainder; by client size if no client wants the cluster at all), so no row is lost; the reference drops the rows
    no client drew.
    """
    num_clients = len(sizes)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for cluster in range(mixtures.shape[1]):
        rows = rng.permutation(np.flatnonzero(cluster_of == cluster))
        wanted = sizes * mixtures[:, cluster]
        if keep_leftovers:
            takes = largest_remainder(wanted if wanted.sum() > 0 else sizes.astype(np.float64), len(rows))
        else:
            takes = wanted.astype(np.int64)
        bounds = np.concatenate([[0], np.cumsum(takes)])
        for client in range(num_clients):
            parts[client].append(rows[bounds[client] : bounds[client + 1]])
    return [np.sort(np.concatenate(chunks)) for chunks in parts]
