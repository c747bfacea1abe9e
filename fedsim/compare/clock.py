"""The virtual clock as `fedsim compare` reads it: every row of a run's `metrics.csv` carries `sim_time`, the simulated
seconds elapsed at the end of that row's round by fedsim's device model (docs/devices.md; round 0 = 0.0).

Why it gets its own column beside rounds to target: unlike wall seconds it does not depend on the machine or on what
else ran on it, so it can be ranked; and it compares synchronous strategies with asynchronous ones (FedAsync,
FedBuff), whose rows are not rounds but `concurrency` client updates each. A folder written before the clock existed
has no such column, and is shown without a time rather than with a wrong one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

SIM_TIME = "sim_time"
# (unit, seconds) from the largest down: a column or an axis is shown in the largest unit its reference value fills
UNITS = (("h", 3600.0), ("min", 60.0), ("s", 1.0))
# strategies whose rows are not synchronous rounds; the table knows them by name only (a note in its legend)
ASYNCHRONOUS = ("async", "fedbuff")


def simulated_times(rows: Sequence[Mapping[str, str]]) -> list[float] | None:
    """Each row's `sim_time`, or None when the run has no usable clock: a folder from before the column, a blank or
    non-finite value (a clock cannot be half known), or every value 0 (a clock that never ran)."""
    if not rows or SIM_TIME not in rows[0]:
        return None
    try:
        times = [float(row[SIM_TIME]) for row in rows]
    except (TypeError, ValueError):  # blank cell: None or ""
        return None
    if not all(math.isfinite(t) for t in times) or not any(times):
        return None
    return times


def time_to_target(curve: Sequence[tuple[int, float]], times: Sequence[float], target: float) -> float | None:
    """`sim_time` of the first trained round (round > 0, as for rounds to target) whose global test accuracy is
    ≥ `target`; None when no round reached it or the run has no clock (`times` empty). `times[i]` belongs to
    `curve[i]`."""
    if not times:
        return None
    for (server_round, accuracy), seconds in zip(curve, times, strict=True):
        if server_round > 0 and accuracy >= target:
            return float(seconds)
    return None


def time_unit(seconds: Iterable[float | None], by: str = "smallest") -> tuple[str, float]:
    """(unit, seconds per unit) in which to show a set of durations, one unit for all so that they compare: the
    largest unit in which the smallest (`by="smallest"`, a table column: it keeps two significant digits at one
    decimal) or the largest (`by="largest"`, an axis) positive value is ≥ 1. Seconds when there is none."""
    values = [float(v) for v in seconds if v is not None and math.isfinite(v) and v > 0]
    if not values:
        return "s", 1.0
    reference = min(values) if by == "smallest" else max(values)
    return next(((unit, size) for unit, size in UNITS if reference >= size), UNITS[-1])


def is_asynchronous(strategy: str) -> bool:
    """A strategy label that names an asynchronous strategy (fedasync, fedbuff and variants)."""
    name = strategy.lower()
    return any(marker in name for marker in ASYNCHRONOUS)


def on_common_grid(curves: Sequence[Sequence[tuple[float, float]]]) -> tuple[np.ndarray, np.ndarray]:
    """Seeds' (sim_time, accuracy) step curves on one time grid, so they can be averaged: a row's accuracy holds
    from the end of its round until the end of the next, and the grid is the union of every seed's round ends up
    to the earliest last end (beyond it some seed has no value). Returns (grid, values[seed, point]); a mean of
    step curves is again a step curve with breaks on this grid, so nothing is lost."""
    end = min(curve[-1][0] for curve in curves)
    grid = np.unique([t for curve in curves for t, _ in curve if t <= end])
    values = np.empty((len(curves), len(grid)))
    for k, curve in enumerate(curves):
        times = np.array([t for t, _ in curve])
        accuracies = np.array([a for _, a in curve])
        index = np.searchsorted(times, grid, side="right") - 1  # the last row ended by then
        values[k] = accuracies[np.maximum(index, 0)]
    return grid, values
