"""Communication as `fedsim compare` reads it: every row of a run's `metrics.csv` carries the bytes the server sent to
(`bytes_down`) and received from (`bytes_up`) the clients during that row's round, as Flower serialises the messages,
and their running totals since the run began (`total_bytes_down`, `total_bytes_up`; round 0 = discovery).

Why megabytes get their own columns beside rounds and simulated time: update compression (`compression=...`) trades
accuracy per round for bytes per round, so a compressed strategy is only judged fairly by the traffic it needs to
reach the target and by what it sends in total. A folder written before the byte columns existed is shown without
traffic rather than with a wrong one, as the clock does (`clock`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from .clock import time_to_target

BYTES_DOWN, BYTES_UP = "bytes_down", "bytes_up"
TOTAL_DOWN, TOTAL_UP = "total_bytes_down", "total_bytes_up"
BYTES_PER_MB = 1e6  # decimal megabytes, as network traffic is counted
# (unit, megabytes) from the largest down: a column or an axis is shown in the largest unit its reference value fills
UNITS = (("GB", 1e3), ("MB", 1.0), ("kB", 1e-3))


def _column(rows: Sequence[Mapping[str, str]], key: str) -> list[float] | None:
    """Every row's `key` as a float, or None when a row lacks it, leaves it blank or holds a non-finite value."""
    if not rows or key not in rows[0]:
        return None
    try:
        values = [float(row[key]) for row in rows]
    except (TypeError, ValueError, KeyError):  # blank cell: None or ""
        return None
    return values if all(math.isfinite(v) for v in values) else None


def cumulative_megabytes(rows: Sequence[Mapping[str, str]]) -> list[float] | None:
    """Each row's traffic since the run began, down + up, in MB (1e6 bytes); None when the run has no usable byte
    count: a folder from before the columns, a blank or non-finite value, or every total 0 (nothing was counted)."""
    down, up = _column(rows, TOTAL_DOWN), _column(rows, TOTAL_UP)
    if down is None or up is None:
        return None
    totals = [(d + u) / BYTES_PER_MB for d, u in zip(down, up, strict=True)]
    return totals if any(totals) else None


def uplink_bytes_per_round(rows: Sequence[Mapping[str, str]]) -> float | None:
    """Mean `bytes_up` over the trained rows (round > 0; round 0 is discovery, no update travels): what one round's
    client updates weigh on the wire. None without a usable column or without a trained row."""
    trained = [row for row in rows if int(row["round"]) > 0]
    values = _column(trained, BYTES_UP)
    if not values:
        return None
    return math.fsum(values) / len(values)


def mb_to_target(curve: Sequence[tuple[int, float]], megabytes: Sequence[float], target: float) -> float | None:
    """Traffic (MB, down + up since the start) at the end of the first trained round (round > 0) whose global test
    accuracy is ≥ `target`; None when no round reached it or the run has no byte count (`megabytes` empty).
    `megabytes[i]` belongs to `curve[i]`; the rule is the simulated clock's, on another cumulative axis."""
    return time_to_target(curve, megabytes, target)


def _positive(values: Iterable[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v) and v > 0]


def traffic_unit(megabytes: Iterable[float | None], by: str = "largest") -> tuple[str, float]:
    """(unit, MB per unit) in which to show a set of volumes, one for all so that they compare: the largest unit in
    which the largest (`by="largest"`: a table column or an axis, read in the unit of its bulk) or the smallest
    (`by="smallest"`) positive value is ≥ 1. MB when there is none."""
    values = _positive(megabytes)
    if not values:
        return "MB", 1.0
    reference = max(values) if by == "largest" else min(values)
    return next(((unit, size) for unit, size in UNITS if reference >= size), UNITS[-1])


def traffic_decimals(megabytes: Iterable[float | None], size: float, least: int = 1) -> int:
    """Decimals that keep two significant digits of the smallest positive volume shown in units of `size` MB, and
    at least `least`: a top-k run's 0.032 MB beside FedAvg's 32 MB reads 0.032 and 32.003, not 0.0 and 32.0."""
    values = _positive(megabytes)
    if not values:
        return least
    return max(least, 1 - math.floor(math.log10(min(values) / size)))
