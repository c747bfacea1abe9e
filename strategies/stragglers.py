"""Systems heterogeneity as in FedProx (Li et al., MLSys 2020, §5.2 and `flearn/trainers/fedprox.py`).

Each round a fraction of the sampled clients are stragglers. In the reference code `np.random.seed(round)` makes
the choice identical for FedAvg and FedProx; here a generator seeded by (seed, round) picks the same positions of
the sampled cohort for every strategy and engine. Under FedAvg stragglers are dropped (they never train); under
FedProx they train a random 1..E-1 epochs (numpy's `randint(1, E)`) and are aggregated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import Message

from fedsim.protocol.keys import LOCAL_EPOCHS_KEY

from .common import with_config

STRAGGLER_MODES = ("drop", "partial")


@dataclass(frozen=True)
class StragglerPlan:
    active: list[int]  # positions in the cohort that do their full local work
    stragglers: list[int]  # positions that straggle
    epochs: dict[int, int]  # position -> epochs, for stragglers under partial work


def plan_stragglers(cohort_size: int, fraction: float, local_epochs: int, seed: int,
                    server_round: int) -> StragglerPlan:
    """Active clients = a uniform choice of round(K * (1 - fraction)) of the K sampled; the rest straggle."""
    rng = np.random.default_rng([seed, server_round, 7919])
    num_active = int(round(cohort_size * (1.0 - fraction)))
    active = sorted(int(i) for i in rng.choice(cohort_size, size=num_active, replace=False))
    stragglers = [i for i in range(cohort_size) if i not in set(active)]
    epochs = {i: int(rng.integers(1, local_epochs)) if local_epochs > 1 else 1 for i in stragglers}
    return StragglerPlan(active, stragglers, epochs)


def apply_stragglers(
    messages: Sequence[Message], mode: str, fraction: float, local_epochs: int, seed: int, server_round: int
) -> tuple[list[Message], int]:
    """Drop stragglers' messages (`drop`) or give them fewer epochs (`partial`); returns messages and #stragglers."""
    messages = list(messages)
    if fraction <= 0 or not messages:
        return messages, 0
    plan = plan_stragglers(len(messages), fraction, local_epochs, seed, server_round)
    if mode == "drop":
        return [messages[i] for i in plan.active], len(plan.stragglers)
    if mode == "partial":
        out = [with_config(m, **{LOCAL_EPOCHS_KEY: plan.epochs[i]}) if i in plan.epochs else m
               for i, m in enumerate(messages)]
        return out, len(plan.stragglers)
    raise ValueError(f"straggler_mode={mode!r}: one of {', '.join(STRAGGLER_MODES)}")
