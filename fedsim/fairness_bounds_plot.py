"""bounds.png: the best achievable accuracy over the two disparity budgets, with the perfect classifier's point and
the runs marked where they sit; drawn from the report alone, so bounds.json can be re-plotted."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .plots import plt, save_figure


def plot_bounds(report: Mapping[str, Any], path: Path) -> None:
    """A heatmap of accuracy (colour, with labelled contours) over ε_g (x) and ε_l (y), in bits."""
    eps_global, eps_local = np.array(report["eps_global"]), np.array(report["eps_local"])
    accuracy = np.array(report["accuracy"]).T  # rows: ε_l, columns: ε_g
    figure, axis = plt.subplots(figsize=(6.6, 5.2), dpi=120)
    mesh = axis.pcolormesh(eps_global, eps_local, accuracy, shading="nearest", cmap="viridis",
                           vmin=float(accuracy.min()), vmax=1.0)
    figure.colorbar(mesh, ax=axis, label="best achievable accuracy")
    levels = np.unique(np.round(np.linspace(accuracy.min(), 1.0, 8)[1:-1], 3))
    if accuracy.max() - accuracy.min() > 1e-3 and len(levels):
        contours = axis.contour(eps_global, eps_local, accuracy, levels=levels, colors="white", linewidths=0.7)
        axis.clabel(contours, fontsize=7, fmt="%.3f")
    label = report["label_disparity"]
    axis.plot(label["global"], label["local"], marker="*", markersize=13, color="white", markeredgecolor="black",
              linestyle="none", label=f"Ŷ = Y (accuracy 1): {label['global']:.3f}, {label['local']:.3f} bits")
    colours = plt.get_cmap("tab10")
    for index, strategy in enumerate(report.get("strategies", [])):
        colour = colours(index % 10)
        mine = [run for run in report.get("runs", []) if run["strategy"] == strategy["strategy"]]
        if len(mine) > 1:
            axis.scatter([run["global"] for run in mine], [run["local"] for run in mine], s=12, color=colour,
                         alpha=0.5, edgecolors="none")
        axis.scatter(strategy["global"], strategy["local"], s=60, color=colour, edgecolors="white", linewidths=1.2,
                     zorder=3, label=f"{strategy['strategy']}: {strategy['accuracy']:.3f} (bound "
                                     f"{strategy['bound']:.3f})")
    shown = [label["global"], eps_global.max()] + [run["global"] for run in report.get("runs", [])]
    shown_local = [label["local"], eps_local.max()] + [run["local"] for run in report.get("runs", [])]
    step_global = eps_global[1] - eps_global[0] if len(eps_global) > 1 else 0.05
    step_local = eps_local[1] - eps_local[0] if len(eps_local) > 1 else 0.05
    axis.set_xlim(-step_global / 2, max(shown) + step_global / 2)
    axis.set_ylim(-step_local / 2, max(shown_local) + step_local / 2)
    axis.set_xlabel("global disparity budget ε_g = max I(Z;Ŷ) (bits)")
    axis.set_ylabel("local disparity budget ε_l = max I(Z;Ŷ|S) (bits)")
    axis.legend(loc="lower right", fontsize=7, framealpha=0.85)
    title = (f"accuracy–fairness bound: {report['dataset']}, {report['partition']}, "
             f"{report['num_clients']} clients ({report['rows']} rows)")
    save_figure(figure, path, title)
