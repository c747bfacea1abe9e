"""What fairness auditing costs the server: the disparity audit's BROJA decomposition (`fedsim.disparity`, once per
round) and `fedsim fairness-bounds`'s grid of exact convex programs (`fedsim.fairness_bounds`), by number of
clients. Random federations (P(S, Z, Ŷ) drawn from a Dirichlet; per-client counts of a binary Z and Y), median of
`--repeats` timings of each.

    python bench/fairness_cost.py [--clients 2 10 100 1000] [--grid 10] [--repeats 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np

from fedsim.disparity import disparity
from fedsim.fairness_bounds import CellCounts, TradeOff, budget_axes, solve_grid


def random_joint(clients: int, rng: np.random.Generator) -> np.ndarray:
    """Any P(S, Z, Ŷ): mostly U = 0 beyond a few clients, which an exact check settles without the solver."""
    return rng.dirichlet(np.ones(4 * clients)).reshape(clients, 2, 2)


def biased_joint(clients: int, rng: np.random.Generator) -> np.ndarray:
    """Every client's predictions favour group 1 (P(Ŷ=1 | Z=0) in [0.1, 0.4], P(Ŷ=1 | Z=1) in [0.6, 0.9]): U > 0,
    the barrier solver's case, as a biased model gives."""
    share = rng.dirichlet(np.ones(clients))
    z_one = rng.uniform(0.3, 0.7, clients)
    positive = np.stack([rng.uniform(0.1, 0.4, clients), rng.uniform(0.6, 0.9, clients)], axis=1)
    z = np.stack([1 - z_one, z_one], axis=1)
    return share[:, None, None] * z[:, :, None] * np.stack([1 - positive, positive], axis=2)


def audit_seconds(clients: int, repeats: int, rng: np.random.Generator, draw=random_joint) -> float:
    """Median seconds of one `disparity` call on a drawn (clients, 2, 2) joint."""
    times = []
    for _ in range(repeats):
        joint = draw(clients, rng)
        started = time.perf_counter()
        disparity(joint)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def grid_seconds(clients: int, grid: int, repeats: int, rng: np.random.Generator) -> float:
    """Median seconds of a `grid` × `grid` trade-off on random per-client (Z, Y) counts (the problem built anew)."""
    times = []
    for _ in range(repeats):
        rows = rng.integers(50, 500, size=(clients, 2))
        counts = CellCounts(rows, (rows * rng.uniform(0.2, 0.8, size=(clients, 2))).astype(np.int64))
        started = time.perf_counter()
        solve_grid(TradeOff(counts), *budget_axes(counts, grid))
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[2, 10, 100, 1000])
    parser.add_argument("--grid", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    disparity(np.full((2, 2, 2), 1 / 8))  # the first call pays scipy's imports
    print(f"{platform.processor() or platform.machine()}, python {platform.python_version()}; median of "
          f"{args.repeats}\n")
    print(f"| clients | audit, biased predictions: U > 0 (ms / round) | audit, any P(S, Z, Ŷ) (ms / round) "
          f"| fairness-bounds {args.grid}×{args.grid} grid (s) |")
    print("|---|---|---|---|")
    for clients in args.clients:
        biased = audit_seconds(clients, args.repeats, rng, biased_joint) * 1000
        audit = audit_seconds(clients, args.repeats, rng) * 1000
        grid = grid_seconds(clients, args.grid, max(1, args.repeats // 2), rng) if clients <= 100 else None
        print(f"| {clients} | {biased:.1f} | {audit:.1f} | {'—' if grid is None else f'{grid:.2f}'} |")


if __name__ == "__main__":
    main()
