"""Group fairness of a model on data with a binary sensitive attribute A: counting its predictions by group, the
run summary's fairness section, and local reweighing. The counts' wire format is `fedsim.protocol.group_counts`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from .data.tensors import ArrayDataset
from .protocol.group_counts import METRICS, GroupCounts, pooled

__all__ = ["METRICS", "GroupCounts", "fairness_summary", "federation_disparity", "group_counts",
           "model_group_counts", "pooled", "reweighing_weights"]


def group_counts(predictions: np.ndarray, labels: np.ndarray, sensitive: np.ndarray) -> GroupCounts:
    """Count per (A, Y) cell the examples and the predicted positives (Ŷ = 1), and the correct predictions."""
    predictions, labels, sensitive = (np.asarray(v, dtype=np.int64) for v in (predictions, labels, sensitive))
    cell = 2 * sensitive + labels
    total = np.bincount(cell, minlength=4).reshape(2, 2)
    positive = np.bincount(cell, weights=(predictions == 1), minlength=4).reshape(2, 2).astype(np.int64)
    return GroupCounts(total, positive, int((predictions == labels).sum()))


@torch.no_grad()
def model_group_counts(model: nn.Module, data: ArrayDataset, device: torch.device,
                       batch_size: int = 1024) -> GroupCounts:
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


def federation_disparity(counts: Mapping[int, GroupCounts]) -> dict[str, float]:
    """The federation's global and local disparity and their partial information decomposition, in bits
    (`fedsim.disparity`), from the clients' group counts of one model's predictions; {} without counts. Computed
    on the rows the clients evaluated (their validation rows), pooled with each client's share of them."""
    if not counts:
        return {}
    from .disparity import disparity, joint_from_counts  # scipy's optimiser loads with the first audit

    return disparity(joint_from_counts(counts)).as_dict()


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
