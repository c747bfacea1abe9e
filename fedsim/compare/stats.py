"""The uncertainty the comparison states: Student-t 95% confidence intervals over seeds, and paired per-seed
differences between two strategies.

Seeds, not clients or rounds, are the independent repetitions of a comparison, and for one seed every strategy sees
the same partition, initial model and client sampling. So a difference between two strategies is measured seed by
seed (a paired test), which removes the seed-to-seed variation they share; two seeds are the least that gives an
interval.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

LEVEL = 0.95
CI_NOTE = "± = half-width of the Student-t 95% confidence interval over seeds (t with n−1 degrees of freedom × s/√n)"


def t_quantile(degrees_of_freedom: float, level: float = LEVEL) -> float:
    """The two-sided `level` quantile of Student's t (2.776 for 4 degrees of freedom at 95%)."""
    from scipy.stats import t  # scipy only when a table is built

    return float(t.ppf(0.5 + level / 2, degrees_of_freedom))


@dataclass(frozen=True)
class Interval:
    """A mean over n values with the half-width of its confidence interval (None below two values)."""

    mean: float
    half_width: float | None
    n: int

    @property
    def excludes_zero(self) -> bool | None:
        """Whether the interval lies entirely on one side of 0; None when there is no interval."""
        if self.half_width is None:
            return None
        return abs(self.mean) > self.half_width


def mean_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean and Student-t interval of `values` (sample std, n−1 degrees of freedom)."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2 or not all(math.isfinite(value) for value in values):  # a diverged run (loss inf or NaN): no interval
        return Interval(mean, None, n)
    return Interval(mean, t_quantile(n - 1, level) * statistics.stdev(values) / math.sqrt(n), n)


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], level: float = LEVEL) -> Interval | None:
    """Mean and interval of a[seed] − b[seed] over the seeds both have; None when they share no seed."""
    seeds = [seed for seed in a if seed in b]
    if not seeds:
        return None
    return mean_interval([a[seed] - b[seed] for seed in seeds], level)


def welch_difference(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Interval:
    """mean(a) − mean(b) with Welch's interval (unequal variances), for values that cannot be paired."""
    mean = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2 or not all(math.isfinite(value) for value in (*a, *b)):
        return Interval(mean, None, min(len(a), len(b)))
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return Interval(mean, 0.0, min(len(a), len(b)))
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return Interval(mean, t_quantile(df, level) * se, min(len(a), len(b)))


def difference(a: Mapping[int, float], b: Mapping[int, float], level: float = LEVEL) -> Interval:
    """a − b by seed: paired over the shared seeds when there are two or more, else Welch over all values."""
    paired = paired_difference(a, b, level)
    if paired is not None and paired.n >= 2:
        return paired
    return welch_difference(list(a.values()), list(b.values()), level)
