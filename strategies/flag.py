"""Flag Aggregator (Almasi, Mishra, Vamanan, Ravi; ICLR 2024; arXiv 2302.05865): a Byzantine-robust aggregate that
projects the clients' normalised updates onto a subspace fitted by flag-median IRLS, instead of averaging models.

Reference: `hamidralmasi/FlagAggregator`, `aggregators/flag.py` and `center_algorithms_torch.irls_flag` (one IRLS
step from a random start, as released). Written so that only p x p matrices are decomposed: the n-dimensional
work is one Gram matrix, one product with the random start and one combination of the updates.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from logging import INFO
from numbers import Integral, Real
from typing import Any, NamedTuple

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.supercore import log

from fedsim.protocol.constraints import Interval, Options

from .base import WeightedAggregation
from .common import single_array_record, single_metric, weighted_average

SINE_EPS = 1e-7  # the released weight's perturbation: a = (|1 - cos^2| + 1e-7)^(-1/4)
CONVERGED = 1e-10  # the released loop stops once the objective is this small
STARTS = ("released", "projected")
UPDATE_SCALES = ("released", "median_norm")
STREAM = 0x666C6167  # "flag": keeps this strategy's random stream apart from others seeded by (seed, round)
CHUNK_ELEMENTS = 1 << 22  # random start generated n-chunk by n-chunk: at most this many numbers at once
TOLERANCE_FACTOR = 16.0  # eigenvalues below 16 eps (p + sqrt(n)) x the largest diagonal count as zero


class FlagFit(NamedTuple):
    """The aggregate and what led to it.

    g_star: (1/r) sum_k Y Y^T g_k-hat (n); ratios: ||Y^T g_k-hat||^2 per update (0 for a zero update);
    objective: sum_k sqrt(max(0, 1 - ratio_k)); accepted: whether at least one IRLS step was kept;
    basis: E with Y = G-hat E (p x r', G-hat the n x p matrix of normalised updates), None when the random start
    was kept; steps: the IRLS steps kept.
    """

    g_star: np.ndarray
    ratios: np.ndarray
    objective: float
    accepted: bool
    basis: np.ndarray | None
    steps: int


def flag_aggregate(updates: np.ndarray, r: int, lambda_: float = 0.0, irls_iters: int = 1,
                   generator: np.random.Generator | int = 0, *, tolerance: float = 1e-6,
                   start: str | np.ndarray = "released") -> tuple[np.ndarray, np.ndarray, float, bool]:
    """(g_star, ratios, objective, accepted) of the Flag Aggregator on the rows of `updates` (p x n).

    See `flag_fit` for the arguments; this is its first four results, for benchmarks.
    """
    fit = flag_fit(updates, r, lambda_, irls_iters, generator, tolerance=tolerance, start=start)
    return fit.g_star, fit.ratios, fit.objective, fit.accepted


def flag_fit(updates: np.ndarray, r: int, lambda_: float = 0.0, irls_iters: int = 1,
             generator: np.random.Generator | int = 0, *, tolerance: float = 1e-6,
             start: str | np.ndarray = "released") -> FlagFit:
    """Flag-median IRLS on the unit-normalised rows of `updates` (p updates of n numbers), through p x p matrices.

    r: subspace dimension (>= 1; more than p is clamped to p; the aggregate is divided by this r).
    lambda_: weight of the pairwise-difference columns (0: none, as the released default).
    irls_iters: IRLS steps at most (1 as released); more stop once the objective falls by less than `tolerance`,
    and a step that does not lower the objective is never kept.
    generator: a numpy Generator or a seed, for the random start only (no global random state is touched).
    start: "released" (QR of an n x r U[-0.5, 0.5) matrix, generated in chunks: the projector only needs its
    Cholesky factor), "projected" (an exactly Haar-distributed start, drawn only through its projection onto the
    updates' span: no n x r matrix, O(p r^2) instead of O(n r (p + r))), or an explicit orthonormal n x r array.

    float64 updates are computed in float64; any other float type in float32 (the Gram matrix of a p x n float32
    matrix: twice as fast, float32-accurate projections). The small linear algebra is float64 throughout.
    """
    if r < 1:
        raise ValueError(f"r={r!r}: must be >= 1")
    if lambda_ < 0:
        raise ValueError(f"lambda_={lambda_!r}: must be >= 0")
    if irls_iters < 1:
        raise ValueError(f"irls_iters={irls_iters!r}: must be >= 1")
    rng = generator if isinstance(generator, np.random.Generator) else np.random.default_rng(generator)
    matrix = _work_matrix(updates)
    p, n = matrix.shape
    r = min(int(r), p)
    raw = np.asarray(matrix @ matrix.T, dtype=np.float64)  # A @ A.T: BLAS syrk
    norms = np.sqrt(np.maximum(np.diag(raw).copy(), 0.0))
    inverse = np.divide(1.0, norms, out=np.zeros(p), where=norms > 0)  # a zero update stays 0, not NaN
    gram = raw * inverse[:, None] * inverse[None, :]  # G-hat^T G-hat
    if n == 0:  # nothing floating to aggregate
        return FlagFit(np.zeros(0), np.zeros(p), float(p), False, None, 0)
    span = _Span(gram, TOLERANCE_FACTOR * float(np.finfo(matrix.dtype).eps) * (p + np.sqrt(n)))
    frame = _start(start, span, inverse, matrix, min(r, n), rng)

    projections = frame.projections  # B = G-hat^T Y, p x r'
    objective = _objective(projections)
    basis: np.ndarray | None = None
    steps = 0
    for _ in range(irls_iters):
        if objective <= CONVERGED:
            break
        rotation = _irls_step(span, projections, r, lambda_)
        new_projections = span.factor @ rotation
        new_objective = _objective(new_projections)
        if not new_objective < objective:  # the released accept test: keep the previous Y
            break
        change = objective - new_objective
        basis, projections, objective, steps = span.to_span @ rotation, new_projections, new_objective, steps + 1
        if change < tolerance:
            break

    total = projections.sum(axis=0)  # Y^T sum_k g_k-hat
    if basis is not None:
        coefficients = basis @ total / r
        g_star = _combine(matrix, coefficients * inverse)
    elif np.any(total):
        g_star = frame.apply(total) / r
    else:
        g_star = np.zeros(n)
    ratios = np.sum(projections**2, axis=1)
    return FlagFit(g_star, ratios, float(objective), steps > 0, basis, steps)


def _work_matrix(updates: np.ndarray) -> np.ndarray:
    matrix = np.asarray(updates)
    if matrix.ndim != 2 or matrix.shape[0] < 1:
        raise ValueError(f"updates of shape {matrix.shape}: expected p x n with p >= 1")
    dtype = np.float64 if matrix.dtype == np.float64 or not np.issubdtype(matrix.dtype, np.floating) else np.float32
    return np.ascontiguousarray(matrix, dtype=dtype)


def _combine(matrix: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    """sum_k coefficients_k matrix_k, accumulated in float64."""
    if matrix.dtype == np.float64:
        return coefficients @ matrix
    total = np.zeros(matrix.shape[1])
    step = max(1, CHUNK_ELEMENTS // max(1, matrix.shape[0]))
    for low in range(0, matrix.shape[1], step):
        total[low:low + step] = coefficients @ matrix[:, low:low + step].astype(np.float64)
    return total


def _objective(projections: np.ndarray) -> float:
    """sum_k sqrt(max(0, 1 - ||Y^T g_k-hat||^2)), the released sine-median objective (a zero update counts 1)."""
    return float(np.sum(np.sqrt(np.maximum(0.0, 1.0 - np.sum(projections**2, axis=1)))))


def _sine_weight(cos_squared: np.ndarray) -> np.ndarray:
    return (np.abs(1.0 - cos_squared) + SINE_EPS) ** -0.25


def _project(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """matrix @ vector (p), accumulated in float64."""
    if matrix.dtype == np.float64:
        return matrix @ vector
    total = np.zeros(matrix.shape[0])
    step = max(1, CHUNK_ELEMENTS // max(1, matrix.shape[0]))
    for low in range(0, matrix.shape[1], step):
        total += matrix[:, low:low + step].astype(np.float64) @ vector[low:low + step]
    return total


class _Span:
    """An orthonormal basis Q of the normalised updates' span, from G-hat^T G-hat = V diag(v) V^T: G-hat = Q Z with
    Z = diag(v)^(1/2) V^T and Q = G-hat V diag(v)^(-1/2), the eigenvalues below `tol` (times the largest diagonal, 1)
    dropped as rounding. Everything the IRLS needs is in these q <= p coordinates."""

    def __init__(self, gram: np.ndarray, tol: float) -> None:
        values, vectors = np.linalg.eigh(gram)
        keep = values > tol * max(float(np.max(np.diag(gram))), 0.0)
        self.values, self.vectors = values[keep], vectors[:, keep]
        self.factor = self.vectors * np.sqrt(self.values)  # Z^T (p x q): G-hat^T Q
        self.to_span = self.vectors / np.sqrt(self.values)  # Q = G-hat to_span

    @property
    def rank(self) -> int:
        return int(self.values.size)


def _start(start: str | np.ndarray, span: _Span, inverse: np.ndarray, matrix: np.ndarray, r: int,
           rng: np.random.Generator) -> _ExplicitStart | _ReleasedStart | _ProjectedStart:
    """The random start; "projected" needs n >= rank + r (else the released draw, which any n allows)."""
    if isinstance(start, np.ndarray):
        return _ExplicitStart(np.asarray(start, dtype=np.float64), matrix, inverse)
    if start not in STARTS:
        raise ValueError(f"start={start!r}: one of {', '.join(STARTS)}, or an n x r array")
    if start == "projected" and matrix.shape[1] - span.rank >= r:
        return _ProjectedStart(span, inverse, matrix, r, rng)
    return _ReleasedStart(matrix, inverse, r, rng)


def _irls_step(span: _Span, projections: np.ndarray, r: int, lambda_: float) -> np.ndarray:
    """One flag-mean iteration from the current Y (given by B = G-hat^T Y): W with the new Y = Q W.

    The weighted column matrix is M = G-hat C (columns a_k g_k-hat, then a_ij (g_i-hat - g_j-hat) for every ordered
    pair), so M M^T = Q (Z S Z^T) Q^T with S = C C^T = diag(a^2) + 2 (diag(A 1) - A), A_ij = a_ij^2 (a graph
    Laplacian: the p^2 pair columns are never built). Y = Q W, W the top-r eigenvectors of the q x q matrix
    Z S Z^T (positive definite: S is, and Z has full row rank), so Y is orthonormal whatever the eigenvalues.
    """
    p = projections.shape[0]
    cos_squared = np.sum(projections**2, axis=1)
    weights = _sine_weight(cos_squared) ** 2
    if lambda_ > 0 and p > 1:
        inner = projections @ projections.T
        difference = cos_squared[:, None] + cos_squared[None, :] - 2.0 * inner  # ||Y^T (g_i - g_j)||^2
        pair_squared = (_sine_weight(difference) * lambda_ / (p * (p - 1))) ** 2
        np.fill_diagonal(pair_squared, 0.0)
        middle = np.diag(weights + 2.0 * pair_squared.sum(axis=1)) - 2.0 * pair_squared
        weighted = span.factor.T @ middle @ span.factor
    else:
        weighted = (span.factor.T * weights) @ span.factor
    values, vectors = np.linalg.eigh((weighted + weighted.T) / 2.0)
    return vectors[:, np.argsort(values)[::-1][:r]]


class _ExplicitStart:
    """A given orthonormal n x r start (tests, and comparisons with the released code)."""

    def __init__(self, frame: np.ndarray, matrix: np.ndarray, inverse: np.ndarray) -> None:
        if frame.ndim != 2 or frame.shape[0] != matrix.shape[1]:
            raise ValueError(f"start of shape {frame.shape}: expected n x r with n = {matrix.shape[1]}")
        self.frame = frame
        self.projections = inverse[:, None] * (matrix.astype(np.float64) @ frame)

    def apply(self, vector: np.ndarray) -> np.ndarray:
        return self.frame @ vector


class _ReleasedStart:
    """Y0 = QR(X), X uniform on [-0.5, 0.5)^(n x r), as released. X = Y0 L^T with X^T X = L L^T, so
    G-hat^T Y0 = (G-hat^T X) L^(-T): X is drawn chunk by chunk, accumulating X^T X and U X, never held whole.
    Y0 itself is needed only if the first IRLS step is refused; it is then drawn again from a copy of the
    generator."""

    def __init__(self, matrix: np.ndarray, inverse: np.ndarray, r: int, rng: np.random.Generator) -> None:
        self.matrix, self.r, self.rng = matrix, r, copy.deepcopy(rng)
        p = matrix.shape[0]
        square, product = np.zeros((r, r)), np.zeros((p, r))
        for low, block in self._blocks(rng):
            square += block.T @ block
            product += matrix[:, low:low + block.shape[0]] @ block
        self.lower = np.linalg.cholesky(square)
        self.projections = inverse[:, None] * np.linalg.solve(self.lower, product.T).T

    def _blocks(self, rng: np.random.Generator) -> Iterable[tuple[int, np.ndarray]]:
        n = self.matrix.shape[1]
        step = max(1, CHUNK_ELEMENTS // self.r)
        for low in range(0, n, step):
            block = rng.random((min(step, n - low), self.r), dtype=self.matrix.dtype)
            block -= 0.5
            yield low, block

    def apply(self, vector: np.ndarray) -> np.ndarray:
        """Y0 vector = X L^(-T) vector."""
        weights = np.linalg.solve(self.lower.T, vector)
        out = np.zeros(self.matrix.shape[1])
        for low, block in self._blocks(copy.deepcopy(self.rng)):
            out[low:low + block.shape[0]] = block.astype(np.float64) @ weights
        return out


class _ProjectedStart:
    """A Haar-distributed Y0, drawn only through Q^T Y0 (Q an orthonormal basis of the updates' span, dimension q).

    Y0 = N F^(-T) with N Gaussian n x r and N^T N = F F^T (the QR of a Gaussian matrix is Haar). In the basis
    [Q, Q_perp], N = [N_top; N_rest] and N_rest^T N_rest is Wishart(n - q, I_r), drawn by Bartlett's decomposition
    L L^T; so F comes from N_top^T N_top + L L^T, and Q^T Y0 = N_top F^(-T) has exactly the distribution of the
    n-dimensional draw. If the start is kept, Y0 v is completed with Q_perp N_rest F^(-T) v: a vector of norm
    ||L^T F^(-T) v|| in a uniformly random direction orthogonal to the span (exact in distribution for that vector).
    """

    def __init__(self, span: _Span, inverse: np.ndarray, matrix: np.ndarray, r: int, rng: np.random.Generator) -> None:
        self.matrix, self.inverse, self.rng, self.span = matrix, inverse, rng, span
        q, n = span.rank, matrix.shape[1]
        top = rng.standard_normal((q, r))
        self.bartlett = np.tril(rng.standard_normal((r, r)), -1)
        self.bartlett[np.diag_indices(r)] = np.sqrt(rng.chisquare(n - q - np.arange(r)))
        self.cholesky = np.linalg.cholesky(top.T @ top + self.bartlett @ self.bartlett.T)
        self.top = top
        coordinates = np.linalg.solve(self.cholesky, top.T).T  # Q^T Y0, q x r
        self.projections = span.factor @ coordinates

    def apply(self, vector: np.ndarray) -> np.ndarray:
        weights = np.linalg.solve(self.cholesky.T, vector)
        to_span = self.span.to_span
        inside = _combine(self.matrix, self.inverse * (to_span @ (self.top @ weights)))
        noise = self.rng.standard_normal(self.matrix.shape[1])
        along = to_span.T @ (self.inverse * _project(self.matrix, noise))  # Q^T noise
        orthogonal = noise - _combine(self.matrix, self.inverse * (to_span @ along))
        length = float(np.linalg.norm(self.bartlett.T @ weights))
        norm = float(np.linalg.norm(orthogonal))
        return inside + (orthogonal * (length / norm) if norm > 0 else 0.0)


class FlagAggregator(WeightedAggregation):
    """The Flag Aggregator on FL updates: a subspace fitted to the normalised updates, then their projection.

    Round t, with the p valid replies and the global model w:
        Delta_k = w_k - w  (floating arrays, flattened and concatenated),  g_k-hat = Delta_k / ||Delta_k||
        Y0 = QR(U[-0.5, 0.5)^(n x r)),  seeded by (seed, t)
        a_k = (|1 - ||Y0^T g_k-hat||^2| + 1e-7)^(-1/4);  with lambda > 0 also, for every ordered pair i != j,
        a_ij = (|1 - ||Y0^T (g_i-hat - g_j-hat)||^2| + 1e-7)^(-1/4) lambda / (p (p - 1))
        Y = top-r left singular vectors of [a_k g_k-hat ..., a_ij (g_i-hat - g_j-hat) ...]
        keep Y only if sum_k sqrt(max(0, 1 - ||Y^T g_k-hat||^2)) is below its value at Y0, else keep Y0
        g* = (1/r) sum_k Y Y^T g_k-hat,   w' = w + server_lr g*
    Integer arrays (BatchNorm's num_batches_tracked) are averaged n_k-weighted as FedAvg does. Everything is
    computed through p x p matrices (`flag_fit`); the client weights reported are the reconstruction ratios
    ||Y^T g_k-hat||^2 (the paper's worker quality; 0 for a zero update), the round scalars `flag_objective` (the
    final objective) and `flag_accepted` (1.0 if an IRLS step was kept).

    As released (`aggregators/flag.py`): one IRLS step from a random start, the sine weights, the accept test and
    the 1/r scaling. The norm of g* is then (sum of cosines)/r, not that of a mean update: p identical updates give
    (p/r) Delta-hat, so a server_lr tuned for FedAvg is off by about p/r times the update norm;
    `update_scale="median_norm"` rescales g* by median_k ||Delta_k|| r / p, so that p identical updates give that
    update back. Deviations: the start comes from this strategy's own generator, never from torch's global seed
    (the released code calls `torch.manual_seed(1)` every aggregation); the reconstruction ratios are not written
    to a CSV file; zero updates stay zero instead of being divided by 0.

    Parameters (beyond `WeightedAggregation`'s)
    ----------
    subspace_dim : int >= 1 or "auto" (default)
        r; "auto" is max(1, floor(p / 2)) of the round's p valid replies (the paper's experiments use r ~ p/2).
        Clamped to p.
    lambda_ : float >= 0, default 0
        Weight of the pairwise-difference columns.
    irls_iters : int >= 1, default 1 (as released)
        More: the paper's IRLS, iterated from the previous Y until the objective falls by less than `tolerance`.
    tolerance : float > 0, default 1e-6
    server_lr : float > 0, default 1.0
    update_scale : "median_norm" (default) | "released"
        FL's default: g* times median_k ||Delta_k|| r / p, so that the step has an update's size. "released" keeps
        the reference's Sigma cosines / r, tuned there with its distributed-SGD learning rate (0.2): on digits, 15
        clients, one local epoch, 3 seeds, it gave 0.55 final accuracy against 0.86 for median_norm (FedAvg 0.86).
    start : "released" (default) | "projected"
        The random start: the released QR of a uniform n x r matrix (O(n r (p + r)) work), or an exactly Haar
        distributed start drawn only through its projection onto the updates (O(p r^2); the choice when r is
        large, e.g. "auto" with many clients). Not in the specification: an addition for speed.
    """

    _parameter_constraints = {
        "subspace_dim": [Interval(Integral, 1, None, closed="left"), Options({"auto"})],
        "lambda_": [Interval(Real, 0, None, closed="left")],
        "irls_iters": [Interval(Integral, 1, None, closed="left")],
        "tolerance": [Interval(Real, 0, None, closed="neither")],
        "server_lr": [Interval(Real, 0, None, closed="neither")],
        "update_scale": [Options(UPDATE_SCALES)],
        "start": [Options(STARTS)],
    }

    def __init__(self, *, subspace_dim: int | str = "auto", lambda_: float = 0.0, irls_iters: int = 1,
                 tolerance: float = 1e-6, server_lr: float = 1.0, update_scale: str = "median_norm",
                 start: str = "released", **kwargs: Any) -> None:
        if subspace_dim != "auto" and (isinstance(subspace_dim, bool) or not isinstance(subspace_dim, Integral)
                                       or subspace_dim < 1):
            raise ValueError(f"subspace_dim={subspace_dim!r}: an integer >= 1 or 'auto'")
        if lambda_ < 0:
            raise ValueError(f"lambda_={lambda_!r}: must be >= 0")
        if irls_iters < 1:
            raise ValueError(f"irls_iters={irls_iters!r}: must be >= 1")
        if tolerance <= 0 or server_lr <= 0:
            raise ValueError(f"tolerance={tolerance!r}, server_lr={server_lr!r}: both must be > 0")
        if update_scale not in UPDATE_SCALES:
            raise ValueError(f"update_scale={update_scale!r}: one of {', '.join(UPDATE_SCALES)}")
        if start not in STARTS:
            raise ValueError(f"start={start!r}: one of {', '.join(STARTS)}")
        super().__init__(**kwargs)
        self.subspace_dim, self.lambda_, self.irls_iters, self.tolerance = subspace_dim, lambda_, irls_iters, tolerance
        self.server_lr, self.update_scale, self.start = server_lr, update_scale, start

    def summary(self) -> None:
        log(INFO, "\t├──> Flag Aggregator: r=%s, lambda=%s, IRLS steps=%s, server_lr=%s, scale=%s, start=%s",
            self.subspace_dim, self.lambda_, self.irls_iters, self.server_lr, self.update_scale, self.start)
        super().summary()

    def subspace_size(self, replies: int) -> int:
        """r for a round of `replies` valid replies: "auto" is max(1, floor(p / 2)); never more than p."""
        r = max(1, replies // 2) if self.subspace_dim == "auto" else int(self.subspace_dim)
        return min(r, replies)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's reply checks, the flag aggregate of the floating arrays, FedAvg for the integer ones."""
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        if self.current_arrays is None:
            raise RuntimeError("FlagAggregator aggregate_train before configure_train: the global model is unknown")
        base = {name: array.numpy() for name, array in self.current_arrays.items()}
        floating = [name for name, array in base.items() if np.issubdtype(array.dtype, np.floating)]
        updates = _update_matrix([single_array_record(reply.content) for reply in valid], base, floating)
        r = self.subspace_size(len(valid))
        rng = np.random.default_rng([self.seed, server_round, STREAM])
        fit = flag_fit(updates, r, self.lambda_, self.irls_iters, rng, tolerance=self.tolerance, start=self.start)
        step = fit.g_star
        if self.update_scale == "median_norm":
            norms = [np.sqrt(row.astype(np.float64) @ row.astype(np.float64)) for row in updates]
            step = step * float(np.median(norms)) * r / len(valid)
        arrays = _new_arrays(base, floating, self.server_lr * step)
        others = [name for name in base if name not in floating]
        if others:
            sizes = [single_metric(reply.content, self.weighted_by_key) for reply in valid]
            averaged = weighted_average([reply.content for reply in valid], [s / sum(sizes) for s in sizes], others)
            arrays.update(averaged)
        self.client_weights = {reply.metadata.src_node_id: float(ratio)
                               for reply, ratio in zip(valid, fit.ratios, strict=True)}
        self.round_scalars["flag_objective"] = fit.objective
        self.round_scalars["flag_accepted"] = float(fit.accepted)
        record = ArrayRecord({name: Array(np.ascontiguousarray(arrays[name])) for name in base})
        return record, self.train_metrics_aggr_fn([reply.content for reply in valid], self.weighted_by_key)


def _update_matrix(records: Sequence[ArrayRecord], base: dict[str, np.ndarray], names: Sequence[str]) -> np.ndarray:
    """Row k: Delta_k = w_k - w over the named arrays, flattened and concatenated, in the arrays' widest floating
    type (float32 for a float32 model: p x n float64 copies of 1000 clients' 1M-parameter models would be 8 GB)."""
    sizes = [base[name].size for name in names]
    dtype = np.result_type(np.float32, *(base[name].dtype for name in names))
    matrix = np.empty((len(records), sum(sizes)), dtype=dtype)
    for row, record in zip(matrix, records, strict=True):
        offset = 0
        for name, size in zip(names, sizes, strict=True):
            np.subtract(record[name].numpy().ravel(), base[name].ravel(), out=row[offset:offset + size],
                        dtype=dtype, casting="unsafe")
            offset += size
    return matrix


def _new_arrays(base: dict[str, np.ndarray], names: Sequence[str], step: np.ndarray) -> dict[str, np.ndarray]:
    """w + step over the named arrays (step flattened as `_update_matrix` lays them out), in each array's dtype."""
    out: dict[str, np.ndarray] = {}
    offset = 0
    for name in names:
        value = base[name]
        out[name] = (value.astype(np.float64) + step[offset:offset + value.size].reshape(value.shape)).astype(
            value.dtype)
        offset += value.size
    return out


