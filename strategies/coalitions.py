"""FedCollab's collaboration objective and its coalition solver (numpy only).

FedCollab (Bao, Wang, Wu, He, "Optimizing the Collaboration Structure in Cross-Silo Federated Learning", ICML 2023,
arXiv 2306.06508; reference code `baowenxuan/FedCollab`, `src/collab/{evaluate,solver,utils}.py` and
`src/collab_opt.py`) splits the clients into disjoint coalitions, each of which then trains its own FedAvg model.
Why coalitions: joining others buys a client more data (a smaller *generalisation* error, which falls like
1/sqrt(samples)) but pulls its model towards the others' distributions (a larger *distribution-shift* error,
measured by the pairwise discriminator distances d_ij). The objective is the bound on each client's error under
the coalition's sample-weighted mixture; `C` trades the two terms.

With m_j the training sample count of client j, m = sum_j m_j, beta_j = m_j / m and ``choice[i]`` the coalition of
client i (spec `docs/algorithms-wave2.md` section 11.2)::

    alpha_ij = beta_j 1[c_i = c_j] / sum_k beta_k 1[c_i = c_k]      (row-stochastic within a coalition)
    gen_i    = sqrt(sum_j alpha_ij^2 / beta_j / m)                    (= 1 / sqrt(samples in i's coalition))
    shift_i  = sum_j alpha_ij max(d_ij, 0)
    err_i    = C gen_i + shift_i
    objective = (1/N) sum_i err_i

The solver (spec section 11.3) is the reference's local search: start with every client alone; in passes over the
clients in a random order, move a client to the label 0..N-1 (empty labels included, i.e. a new singleton) that
lowers the objective most, if any lowers it strictly; stop after a pass without a move or after `max_iter` passes;
repeat `restarts` times and keep the lowest objective.

Pitfalls, all settled as the reference does:
- the objective is the **unweighted** mean of err_i over clients (the reference's `reduction` also offers a
  beta-weighted mean, unused by the solver); the reference prints N times this value as "Loss";
- the estimated distances lie in [-1, 1] and are **clamped at 0** (the reference clamps once in `collab_opt.py`
  before solving; here both `coalition_errors` and the solver clamp, so the two always agree);
- one local search ends in a local minimum that depends on the visiting order: the answer is the **best over the
  restarts** (the first restart that reaches it wins ties), not the last one.

Deviations: the visiting orders come from a `numpy.random.Generator` seeded by `seed` (the reference uses the
global torch RNG, `torch.manual_seed(seed)` once), so single restarts differ from the reference's, not the optimum
that 100 of them find on the shipped matrices (tests/test_coalitions.py checks all three). The arithmetic is float64
(the reference's is float32). Moves are evaluated all at once per client: since gen_i = 1/sqrt(M_S) with M_S the
samples of i's coalition S, a coalition contributes n_S C / sqrt(M_S) + W_S / M_S with W_S = sum_{i,j in S} m_j d_ij,
and a move changes only the old and the new coalition. These per-label sums are recomputed from the labels for every
client (not updated in place), so a lone client's current label and every empty label tie exactly and such a
relabelling never counts as an improvement, as in the reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["canonical_choice", "coalition_errors", "coalition_objective", "coalitions_of", "solve_coalitions"]


def _check_problem(distances: np.ndarray | Sequence, sizes: np.ndarray | Sequence,
                   c: float) -> tuple[np.ndarray, np.ndarray, float]:
    """(clamped distances, sizes, c) as float64 arrays; one ValueError line for anything malformed."""
    d = np.asarray(distances, dtype=np.float64)
    m = np.asarray(sizes, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] != d.shape[1] or d.shape[0] == 0:
        raise ValueError(f"distances must be a non-empty square matrix, got shape {d.shape}")
    if not np.all(np.isfinite(d)):
        raise ValueError("distances must be finite")
    if not np.allclose(d, d.T, rtol=1e-6, atol=1e-9):
        raise ValueError(f"distances must be symmetric (largest |d - d.T| = {np.abs(d - d.T).max():.3g})")
    if m.shape != (d.shape[0],):
        raise ValueError(f"sizes must be a vector of {d.shape[0]} sample counts, got shape {m.shape}")
    if not np.all(np.isfinite(m)) or np.any(m <= 0):
        raise ValueError("sizes must be finite and > 0")
    c = float(c)
    if not np.isfinite(c) or c < 0:
        raise ValueError(f"c must be finite and >= 0, got {c}")
    return np.maximum(d, 0.0), m, c


def _check_choice(choice: np.ndarray | Sequence, n: int | None = None) -> np.ndarray:
    """The labels as an int64 vector; one ValueError line unless they are whole numbers (of length n if given)."""
    labels = np.asarray(choice)
    integral = labels.dtype.kind in "iu" or (labels.dtype.kind == "f" and np.all(np.isfinite(labels))
                                              and np.all(labels == np.round(labels)))
    if labels.ndim != 1 or labels.size == 0 or not integral:
        raise ValueError(f"choice must be a non-empty vector of integer labels, got {labels.tolist()!r}")
    if n is not None and labels.shape[0] != n:
        raise ValueError(f"choice has {labels.shape[0]} labels for {n} clients")
    return labels.astype(np.int64)


def canonical_choice(choice: np.ndarray | Sequence) -> np.ndarray:
    """Relabel a partition 0..G-1 in order of first appearance: [5, 5, 2, 7, 2] -> [0, 0, 1, 2, 1]."""
    labels = _check_choice(choice)
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first)] = np.arange(first.size)
    return rank[inverse.reshape(-1)]


def coalitions_of(choice: np.ndarray | Sequence) -> list[list[int]]:
    """The clients of each coalition, each list sorted, the coalitions ordered by their smallest client."""
    labels = canonical_choice(choice)
    return [np.flatnonzero(labels == g).tolist() for g in range(int(labels.max()) + 1)]


def coalition_errors(choice: np.ndarray | Sequence, distances: np.ndarray | Sequence, sizes: np.ndarray | Sequence,
                     c: float) -> np.ndarray:
    """err_i = C gen_i + shift_i of every client under the partition `choice` (module docstring; spec 11.2).

    Parameters
    ----------
    choice : the coalition label of each client (any integers; only equality matters).
    distances : (N, N) symmetric pairwise distances d_ij (symmetric to rtol 1e-6, atol 1e-9); negative estimates
        are clamped at 0. The diagonal enters as alpha_ii d_ii (the reference's estimates have d_ii = 0).
    sizes : (N,) training sample counts m_j > 0 (beta = m / sum(m)).
    c : the weight C >= 0 of the generalisation term.
    """
    d, m, c = _check_problem(distances, sizes, c)
    labels = _check_choice(choice, d.shape[0])
    beta = m / m.sum()
    same = labels[:, None] == labels[None, :]
    alpha = same * beta[None, :]
    alpha /= alpha.sum(axis=1, keepdims=True)
    gen = np.sqrt((alpha**2 / beta[None, :]).sum(axis=1) / m.sum())
    shift = (alpha * d).sum(axis=1)
    return c * gen + shift


def coalition_objective(choice: np.ndarray | Sequence, distances: np.ndarray | Sequence, sizes: np.ndarray | Sequence,
                        c: float) -> float:
    """The unweighted mean over clients of `coalition_errors` (the reference's "unweighted_average")."""
    return float(coalition_errors(choice, distances, sizes, c).mean())


def _coalition_cost(count: np.ndarray, mass: np.ndarray, within: np.ndarray, c: float) -> np.ndarray:
    """Sum of err_i over a coalition from its size n, sample mass M and W = sum_{i,j in S} m_j d_ij.

    Every member has gen = 1/sqrt(M) and shift_i = sum_j m_j d_ij / M, so the sum is n C / sqrt(M) + W / M; an empty
    coalition costs 0.
    """
    safe = np.where(count > 0, mass, 1.0)
    return np.where(count > 0, count * c / np.sqrt(safe) + within / safe, 0.0)


def _local_search(d: np.ndarray, dm: np.ndarray, m: np.ndarray, c: float, rng: np.random.Generator,
                  max_iter: int) -> np.ndarray:
    """One run of the reference's `discrete_solver` from the all-alone partition; returns the final labels."""
    n = d.shape[0]
    labels = np.arange(n)
    for _ in range(max_iter):
        moved = False
        for q in rng.permutation(n):
            # Per-label statistics of the partition without q (q parked in the extra bin n), recomputed from scratch
            # so that an empty label is exactly 0 and a lone q ties exactly with every empty label.
            rest = labels.copy()
            rest[q] = n
            count = np.bincount(rest, minlength=n + 1)[:n].astype(np.float64)
            mass = np.bincount(rest, weights=m, minlength=n + 1)[:n]
            same = rest[:, None] == rest[None, :]
            within = np.bincount(rest, weights=(dm * same).sum(axis=1), minlength=n + 1)[:n]
            # Adding q to S_l: n + 1, M + m_q, W + sum_{j in S_l} m_j d_qj + m_q sum_{i in S_l} d_iq + m_q d_qq.
            toward = np.bincount(rest, weights=dm[q], minlength=n + 1)[:n]
            back = np.bincount(rest, weights=d[q], minlength=n + 1)[:n]
            joined_mass = mass + m[q]
            joined = ((count + 1.0) * c / np.sqrt(joined_mass)
                      + (within + toward + m[q] * back + m[q] * d[q, q]) / joined_mass)
            # Objective after the move, up to a term common to all labels.
            delta = joined - _coalition_cost(count, mass, within, c)
            best = int(np.argmin(delta))  # first minimal label, as the reference's ascending strict scan
            if delta[best] < delta[labels[q]]:
                labels[q] = best
                moved = True
        if not moved:
            break
    return labels


def solve_coalitions(distances: np.ndarray | Sequence, sizes: np.ndarray | Sequence, c: float = 1.0,
                     restarts: int = 100, max_iter: int = 100, seed: int = 0) -> np.ndarray:
    """The partition minimising `coalition_objective`, by the reference's restarted local search (spec 11.3).

    Parameters
    ----------
    distances : (N, N) symmetric pairwise distances d_ij; negative estimates are clamped at 0.
    sizes : (N,) training sample counts m_j > 0.
    c : the weight C >= 0 of the generalisation term (reference default 1; its examples use 10, 10 and 8).
    restarts : independent local searches, each from the all-alone partition with its own random visiting orders;
        the lowest objective wins (the first one on ties).
    max_iter : the most passes over the clients in one local search.
    seed : seeds the solver's own `numpy.random.Generator` (the global RNG is not touched).

    Returns
    -------
    The coalition label of each client, canonical: 0..G-1 in order of first appearance.
    """
    d, m, c = _check_problem(distances, sizes, c)
    if int(restarts) != restarts or restarts < 1:
        raise ValueError(f"restarts must be an integer >= 1, got {restarts}")
    if int(max_iter) != max_iter or max_iter < 0:
        raise ValueError(f"max_iter must be an integer >= 0, got {max_iter}")
    rng = np.random.default_rng(seed)
    dm = d * m[None, :]
    best_labels, best_value = None, np.inf
    for _ in range(int(restarts)):
        labels = _local_search(d, dm, m, c, rng, int(max_iter))
        value = coalition_objective(labels, d, m, c)
        if value < best_value:
            best_labels, best_value = labels, value
    return canonical_choice(best_labels)
