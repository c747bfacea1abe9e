"""How heterogeneous a partition is: per-client statistics of label histograms, a summary, and a heatmap.

Distances compare a client's distribution p with the global one g (the pooled counts):
- Jensen-Shannon divergence, base 2 (in [0, 1]): `scipy.spatial.distance.jensenshannon(p, g, base=2) ** 2`;
- earth mover's distance as used for non-IID label skew by Zhao et al. (2018, "Federated Learning with Non-IID
  Data"): sum_c |p_c - g_c| (labels have no ground distance, so moving mass between any two classes costs 1 per unit
  each way; this is twice the total-variation distance, in [0, 2]);
- entropy of p in nats (log K for a uniform client over K classes).
For partitions built on embedding clusters the same statistics are given over clusters.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial.distance import jensenshannon

REPORT_FILE = "partition.json"
HEATMAP_FILE = "partition_labels.png"
CLUSTER_HEATMAP_FILE = "partition_clusters.png"


def _entropy(shares: np.ndarray) -> float:
    positive = shares[shares > 0]
    return max(0.0, float(-(positive * np.log(positive)).sum()))


def client_statistics(counts: np.ndarray) -> list[dict[str, float]]:
    """Per client (row of a clients x classes count matrix): size, entropy, JS divergence and EMD to the global mix."""
    counts = np.asarray(counts, dtype=np.float64)
    pooled = counts.sum(0) / counts.sum()
    rows = []
    for row in counts:
        size = row.sum()
        shares = row / size if size > 0 else np.zeros_like(row)
        rows.append({
            "size": int(size),
            "classes": int((row > 0).sum()),
            "entropy": _entropy(shares),
            "js_divergence": float(jensenshannon(shares, pooled, base=2) ** 2) if size > 0 else 1.0,
            "emd": float(np.abs(shares - pooled).sum()),
        })
    return rows


def summarise(rows: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    summary = {}
    for key in ("size", "classes", "entropy", "js_divergence", "emd"):
        values = np.array([row[key] for row in rows], dtype=np.float64)
        summary[key] = {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
                        "max": float(values.max())}
    return summary


def heterogeneity_report(label_counts: np.ndarray, cluster_counts: np.ndarray | None = None) -> dict[str, Any]:
    """The report as plain data: per-client rows and a summary, over labels (and over clusters when given)."""
    rows = client_statistics(label_counts)
    labels = {"clients": rows, "summary": summarise(rows), "counts": np.asarray(label_counts).astype(int).tolist()}
    report: dict[str, Any] = {"num_clients": len(rows), "labels": labels}
    if cluster_counts is not None:
        cluster_rows = client_statistics(cluster_counts)
        report["clusters"] = {"clients": cluster_rows, "summary": summarise(cluster_rows),
                              "counts": np.asarray(cluster_counts).astype(int).tolist()}
    return report


def plot_heatmap(counts: np.ndarray, path: Path, what: str = "label", title: str = "") -> None:
    """Clients x classes heatmap of each client's share of each class (rows normalised), with client sizes."""
    from .plots import save_figure  # selects the headless Agg backend before pyplot loads

    # isort: split
    import matplotlib.pyplot as plt  # after the backend choice

    counts = np.asarray(counts, dtype=np.float64)
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    height = min(12.0, 1.5 + 0.22 * len(counts))
    figure, axis = plt.subplots(figsize=(min(12.0, 2.5 + 0.45 * counts.shape[1]), height), dpi=110)
    image = axis.imshow(shares, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    axis.set_xlabel(what)
    axis.set_ylabel("client (size)")
    if len(counts) <= 60:
        axis.set_yticks(range(len(counts)), [f"{k} ({int(n)})" for k, n in enumerate(counts.sum(1))], fontsize=7)
    if counts.shape[1] <= 40:
        axis.set_xticks(range(counts.shape[1]))
    figure.colorbar(image, ax=axis, label="share of the client's samples")
    save_figure(figure, path, title)


def write_report(folder: Path, label_counts: np.ndarray, title: str = "",
                 cluster_counts: np.ndarray | None = None) -> dict[str, Any]:
    """Write `partition.json` and the clients x labels heatmap (and clients x clusters, when given) into `folder`."""
    from .recorder import write_atomic

    report = heterogeneity_report(label_counts, cluster_counts)
    write_atomic(Path(folder) / REPORT_FILE, json.dumps(report, indent=1).encode())
    plot_heatmap(label_counts, Path(folder) / HEATMAP_FILE, "label", title)
    if cluster_counts is not None:
        plot_heatmap(cluster_counts, Path(folder) / CLUSTER_HEATMAP_FILE, "embedding cluster", title)
    return report
