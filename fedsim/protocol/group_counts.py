"""Group counts: what a client with a sensitive attribute A reports about a binary classifier's predictions.

Counts (not rates) cross the wire: summed over clients they give the global metric exactly, which is how FairFed's
server computes F_g. SPD and EOD follow the FairFed paper's sign convention (group 0 minus group 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

METRICS = ("eod", "spd")
PREFIX = "fair_"


@dataclass(frozen=True)
class GroupCounts:
    """total[a, y] = n(A=a, Y=y); positive[a, y] = how many of them the model predicts as Ŷ=1; correct = #(Ŷ=Y)."""

    total: np.ndarray
    positive: np.ndarray
    correct: int

    def __add__(self, other: GroupCounts) -> GroupCounts:
        return GroupCounts(self.total + other.total, self.positive + other.positive, self.correct + other.correct)

    @property
    def num_examples(self) -> int:
        return int(self.total.sum())

    @property
    def accuracy(self) -> float:
        return self.correct / self.num_examples if self.num_examples else float("nan")

    def spd(self) -> float:
        """P(Ŷ=1 | A=0) - P(Ŷ=1 | A=1); nan when a group is absent."""
        n, pos = self.total.sum(1), self.positive.sum(1)
        return float(pos[0] / n[0] - pos[1] / n[1]) if n.min() > 0 else float("nan")

    def eod(self) -> float:
        """P(Ŷ=1 | A=0, Y=1) - P(Ŷ=1 | A=1, Y=1); nan when a group has no Y=1 example."""
        n, pos = self.total[:, 1], self.positive[:, 1]
        return float(pos[0] / n[0] - pos[1] / n[1]) if n.min() > 0 else float("nan")

    def metric(self, name: str) -> float:
        if name not in METRICS:
            raise ValueError(f"metric={name!r}: one of {', '.join(METRICS)}")
        return self.eod() if name == "eod" else self.spd()

    def to_metrics(self) -> dict[str, int]:
        """Flat integer entries for a MetricRecord (`fair_n_a0_y1`, `fair_pos_a0_y1`, ..., `fair_correct`)."""
        entries = {f"{PREFIX}correct": int(self.correct)}
        for a in (0, 1):
            for y in (0, 1):
                entries[f"{PREFIX}n_a{a}_y{y}"] = int(self.total[a, y])
                entries[f"{PREFIX}pos_a{a}_y{y}"] = int(self.positive[a, y])
        return entries

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, float]) -> GroupCounts | None:
        """The counts a reply's metrics carry, or None when the client's data has no sensitive attribute."""
        if f"{PREFIX}correct" not in metrics:
            return None
        total = np.array([[metrics[f"{PREFIX}n_a{a}_y{y}"] for y in (0, 1)] for a in (0, 1)], dtype=np.int64)
        positive = np.array([[metrics[f"{PREFIX}pos_a{a}_y{y}"] for y in (0, 1)] for a in (0, 1)], dtype=np.int64)
        return cls(total, positive, int(metrics[f"{PREFIX}correct"]))


def pooled(counts: Sequence[GroupCounts]) -> GroupCounts:
    """The counts of several clients summed: what the global metric is computed from."""
    total = counts[0]
    for part in counts[1:]:
        total = total + part
    return total
