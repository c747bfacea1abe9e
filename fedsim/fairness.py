"""Group fairness of a binary classifier with a binary sensitive attribute A, computed from counts.

Counts (not rates) are what clients send: summed over clients they give the global metric exactly, which is how
FairFed's server computes F_g. SPD and EOD follow the FairFed paper's sign convention (group 0 minus group 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .data.tensors import ArrayDataset

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


def group_counts(predictions: np.ndarray, labels: np.ndarray, sensitive: np.ndarray) -> GroupCounts:
    """Count per (A, Y) cell the examples and the predicted positives (Ŷ = 1), and the correct predictions."""
    predictions, labels, sensitive = (np.asarray(v, dtype=np.int64) for v in (predictions, labels, sensitive))
    cell = 2 * sensitive + labels
    total = np.bincount(cell, minlength=4).reshape(2, 2)
    positive = np.bincount(cell, weights=(predictions == 1), minlength=4).reshape(2, 2).astype(np.int64)
    return GroupCounts(total, positive, int((predictions == labels).sum()))


@torch.no_grad()
def model_group_counts(model: nn.Module, data: ArrayDataset, device: torch.device, batch_size: int = 1024) -> GroupCounts:
    """The model's argmax predictions on `data` (which must carry `sensitive`), counted by group."""
    if data.sensitive is None:
        raise ValueError("this data has no sensitive attribute")
    model.to(device).eval()
    predictions = [model(data.x[start : start + batch_size].to(device)).argmax(1).cpu()
                   for start in range(0, len(data), batch_size)]
    joined = torch.cat(predictions).numpy() if predictions else np.zeros(0, dtype=np.int64)
    return group_counts(joined, data.y.numpy(), data.sensitive.numpy())


def _finite(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def fairness_summary(global_counts: GroupCounts, client_counts: Mapping[int, GroupCounts]) -> dict[str, object]:
    """summary.json's `fairness`: the final global model's test SPD/EOD, and each client's on its validation split
    (null where the client lacks a group)."""
    return {
        "test_spd": _finite(global_counts.spd()),
        "test_eod": _finite(global_counts.eod()),
        "clients": {str(pid): {"spd": _finite(c.spd()), "eod": _finite(c.eod()), "accuracy": _finite(c.accuracy)}
                    for pid, c in sorted(client_counts.items())},
    }


def reweighing_weights(labels: torch.Tensor, sensitive: torch.Tensor) -> torch.Tensor:
    """Kamiran & Calders' reweighing (KAIS 2012), FairFed's local debiasing: each row of group (a, y) weighs
    P(A=a)·P(Y=y) / P(A=a, Y=y), so that in the weighted data Y is independent of A. The weights average 1.

    Computed on the client's own rows (what a client can see). A group with no row gets no weight; a client that
    holds one group only gets weight 1 everywhere, i.e. plain training.
    """
    y = labels.long()
    a = sensitive.long()
    n = len(y)
    joint = torch.zeros(2, 2, dtype=torch.float64)
    joint.index_put_((a, y), torch.ones(n, dtype=torch.float64), accumulate=True)
    joint /= max(n, 1)
    expected = joint.sum(1, keepdim=True) * joint.sum(0, keepdim=True)
    ratio = torch.where(joint > 0, expected / joint.clamp_min(1e-300), torch.zeros_like(joint))
    return ratio[a, y].to(torch.float32)
