"""Seeded fault injection for robustness experiments (`faults.*`): clients that crash, send NaN weights, or are slow.

Each (seed, round, partition) draws its faults from its own random stream, so a run with faults is as
reproducible as one without, on every engine, and the same clients fail in the same rounds whatever the strategy.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

_SALT = 65537


class InjectedFault(RuntimeError):
    """Raised by a client that `faults.crash_rate` picked to crash this round."""


@dataclass(frozen=True)
class Faults:
    crash: bool = False
    nan: bool = False
    slow_seconds: float = 0.0


def draw_faults(experiment: Mapping[str, Any], server_round: int, partition_id: int) -> Faults:
    """This client's faults in this round (none unless `faults.*` rates are set)."""
    config = experiment.get("faults") or {}
    rates = [float(config.get(key, 0.0)) for key in ("crash_rate", "nan_rate", "slow_rate")]
    if not any(rates):
        return Faults()
    draws = np.random.default_rng([int(experiment["seed"]), server_round, partition_id, _SALT]).random(3)
    crash, nan, slow = (bool(draw < rate) for draw, rate in zip(draws, rates, strict=True))
    return Faults(crash, nan, float(config.get("slow_seconds", 0.0)) if slow else 0.0)


def before_training(faults: Faults) -> None:
    if faults.crash:
        raise InjectedFault("injected crash (faults.crash_rate)")
    if faults.slow_seconds > 0:
        time.sleep(faults.slow_seconds)


def poisoned(arrays: ArrayRecord) -> ArrayRecord:
    """The same arrays with every floating-point value NaN: what a client whose training diverged sends."""
    out = {}
    for key, array in arrays.items():
        values = array.numpy().copy()
        if np.issubdtype(values.dtype, np.floating):
            values[...] = np.nan
        out[key] = Array(values)
    return ArrayRecord(out)

