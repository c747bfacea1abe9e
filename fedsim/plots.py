"""Plots of a run folder's metrics."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.figure
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def save_figure(figure: matplotlib.figure.Figure, path: Path, title: str = "") -> None:
    """Title, tighten, render to PNG and write atomically (run folders are never left with a torn file)."""
    from .recorder import write_atomic

    if title:
        figure.axes[0].set_title(title, fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    write_atomic(Path(path), buffer.getvalue())


def plot_accuracy(rows: Sequence[Mapping[str, Any]], path: Path, title: str = "") -> None:
    """Global test accuracy per round, with the clients' mean and worst-10% validation accuracy where recorded."""
    rounds = [row["round"] for row in rows]
    figure, axis = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    axis.plot(rounds, [row["test_accuracy"] for row in rows], marker="o", markersize=3,
              label="global model, test split")
    client_rows = [row for row in rows if row.get("client_acc_mean") is not None]
    if client_rows:
        axis.plot([r["round"] for r in client_rows], [r["client_acc_mean"] for r in client_rows],
                  linestyle="--", label="clients' mean (local validation)")
        axis.plot([r["round"] for r in client_rows], [r["client_acc_worst10"] for r in client_rows],
                  linestyle=":", label="clients' worst 10%")
    style_accuracy_axis(axis, "accuracy")
    save_figure(figure, path, title)


def style_accuracy_axis(axis: Any, ylabel: str) -> None:
    """Rounds on x (integers), accuracy in [0, 1] on y, a light grid and the legend low right: every accuracy-per-
    round panel fedsim draws looks the same."""
    axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axis.set_xlabel("round")
    axis.set_ylabel(ylabel)
    axis.set_ylim(0, 1.02)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right", fontsize=8)
