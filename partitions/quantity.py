"""Quantity skew: clients get IID samples but very different amounts of them."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np

from fedsim.protocol.constraints import Interval, Options

from .base import PrecomputedPartitioner, largest_remainder

DISTRIBUTIONS = ("dirichlet", "lognormal")


class QuantitySkewPartitioner(PrecomputedPartitioner):
    """Shuffle the rows and cut them into client-sized pieces; sizes follow the chosen distribution.

    `dirichlet` (NIID-Bench `iid-diff-quantity`): shares q ~ Dir(alpha * 1_K), redrawn until every client gets at
    least `min_partition_size` rows; NIID-Bench retries without limit, here at most `max_retries` times, then a clear
    error. `lognormal`: shares proportional to lognormal(0, sigma) draws (a power-law-like spread, as FedProx's data
    sizes), with the same minimum-size rule. Sizes are rounded by largest remainder, so every row is used once.
    """

    _parameter_constraints = {
        "distribution": [Options(DISTRIBUTIONS)],
        "alpha": [Interval(Real, 0, None, closed="neither")],
        "sigma": [Interval(Real, 0, None, closed="neither")],
        "min_partition_size": [Interval(Integral, 0, None, closed="left")],
        "max_retries": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(
        self,
        num_partitions: int,
        distribution: str = "dirichlet",
        alpha: float = 0.5,
        sigma: float = 1.0,
        min_partition_size: int = 10,
        max_retries: int = 100,
        seed: int | None = 42,
    ) -> None:
        super().__init__(num_partitions)
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution={distribution!r}: one of {', '.join(DISTRIBUTIONS)}")
        if alpha <= 0 or sigma <= 0:
            raise ValueError("QuantitySkewPartitioner needs alpha > 0 and sigma > 0")
        self.distribution, self.alpha, self.sigma = distribution, alpha, sigma
        self.min_partition_size, self.max_retries, self.seed = min_partition_size, max_retries, seed

    def client_sizes(self, total: int, rng: np.random.Generator) -> np.ndarray:
        for _ in range(self.max_retries):
            if self.distribution == "dirichlet":
                shares = rng.dirichlet(np.full(self.num_partitions, self.alpha))
            else:
                shares = rng.lognormal(0.0, self.sigma, self.num_partitions)
            sizes = largest_remainder(shares, total)
            if sizes.min() >= self.min_partition_size:
                return sizes
        raise ValueError(
            f"no {self.distribution} draw gave all {self.num_partitions} clients at least {self.min_partition_size} of "
            f"{total} samples in {self.max_retries} tries; use fewer clients, a larger alpha (smaller sigma) or a "
            "smaller min_partition_size"
        )

    def _compute_partition_indices(self) -> list[np.ndarray]:
        rng = np.random.default_rng(self.seed)
        total = len(self.dataset)
        sizes = self.client_sizes(total, rng)
        order = rng.permutation(total)
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        return [np.sort(order[bounds[k] : bounds[k + 1]]) for k in range(self.num_partitions)]
