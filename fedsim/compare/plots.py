"""The comparison's figures: accuracy curves per round, against simulated time and against communicated megabytes
(mean line, min–max band over seeds), client-accuracy distributions and aggregation weights over rounds, one panel per
setting."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.ticker
import numpy as np

from ..plots import plt, save_figure, style_accuracy_axis
from .clock import on_common_grid, time_unit
from .table import RunMetrics
from .traffic import traffic_unit

CURVES_PLOT = "accuracy_curves.png"
TIME_PLOT = "accuracy_vs_time.png"
TRAFFIC_PLOT = "accuracy_vs_mb.png"
CLIENTS_PLOT = "client_accuracy.png"
WEIGHTS_PLOT = "aggregation_weights.png"
DISPARITY_PLOT = "disparity.png"

# setting label -> strategy -> one RunMetrics per seed
Runs = Mapping[str, Mapping[str, Sequence[RunMetrics]]]


def _colors(strategies: Sequence[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10")
    return {name: cmap(index % 10) for index, name in enumerate(strategies)}


def _panels(count: int, width: float = 5.0, height: float = 3.8, columns: int = 3):  # type: ignore[no-untyped-def]
    columns = max(1, min(count, columns))
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), dpi=110, squeeze=False)
    flat = list(axes.flat)
    for axis in flat[count:]:
        axis.set_visible(False)
    return figure, flat[:count]


def plot_accuracy_curves(runs: Runs, strategies: Sequence[str], path: Path) -> None:
    """Global test accuracy per round: the mean over seeds as a line, the min–max over seeds as a band."""
    colors = _colors(strategies)
    figure, axes = _panels(len(runs))
    for axis, (setting, by_strategy) in zip(axes, runs.items(), strict=True):
        for strategy in strategies:
            seeds = by_strategy.get(strategy, [])
            if not seeds:
                continue
            length = min(len(m.curve) for m in seeds)
            rounds = [r for r, _ in seeds[0].curve[:length]]
            values = np.array([[a for _, a in m.curve[:length]] for m in seeds])
            axis.plot(rounds, values.mean(axis=0), color=colors[strategy], label=f"{strategy} (n={len(seeds)})")
            axis.fill_between(rounds, values.min(axis=0), values.max(axis=0), color=colors[strategy], alpha=0.2,
                              linewidth=0)
        axis.set_title(setting, fontsize=9)
        style_accuracy_axis(axis, "global test accuracy")
    figure.suptitle("global accuracy per round: mean over seeds, band = min–max", fontsize=10)
    save_figure(figure, path)


def plot_accuracy_vs_time(runs: Runs, strategies: Sequence[str], path: Path, target: float | None = None) -> bool:
    """Global test accuracy against simulated time (`clock`): each seed's accuracy as a step curve (a round's
    accuracy holds until the next round ends), the mean over seeds on their common time grid as a line, the min–max
    as a band, the target as a dashed line. Seeds without a clock are left out (n counts the others); one time unit
    for the figure. Returns False (and draws nothing) when no run has a clock."""
    panels = []
    for setting, by_strategy in runs.items():
        found = {s: [list(zip(m.times, (a for _, a in m.curve), strict=True))
                     for m in by_strategy.get(s, []) if m.times] for s in strategies}
        found = {s: curves for s, curves in found.items() if curves}
        if found:
            panels.append((setting, found))
    if not panels:
        return False
    unit, scale = time_unit((curve[-1][0] for _, found in panels for curves in found.values() for curve in curves),
                            by="largest")
    colors = _colors(strategies)
    figure, axes = _panels(len(panels))
    for axis, (setting, found) in zip(axes, panels, strict=True):
        for strategy, curves in found.items():
            grid, values = on_common_grid(curves)
            x = grid / scale
            axis.plot(x, values.mean(axis=0), color=colors[strategy], drawstyle="steps-post",
                      label=f"{strategy} (n={len(curves)})")
            axis.fill_between(x, values.min(axis=0), values.max(axis=0), color=colors[strategy], alpha=0.2,
                              linewidth=0, step="post")
        if target is not None:
            axis.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:g}")
        axis.set_title(setting, fontsize=9)
        style_accuracy_axis(axis, "global test accuracy")
        axis.xaxis.set_major_locator(matplotlib.ticker.AutoLocator())
        axis.set_xlabel(f"simulated time ({unit})")
    figure.suptitle("accuracy against simulated time\nmean over seeds, band = min–max, dashed = target", fontsize=10)
    save_figure(figure, path)
    return True


def plot_accuracy_vs_megabytes(runs: Runs, strategies: Sequence[str], path: Path, target: float | None = None,
                               log_spread: float = 10.0) -> bool:
    """Global test accuracy against cumulative traffic, down + up (`traffic`): each seed's accuracy as a step curve
    (a round's accuracy holds until the next round's bytes are spent), the mean over seeds on their common grid as a
    line, the min–max as a band, the target as a dashed line. A panel's x axis is logarithmic when its strategies'
    total traffic spans more than `log_spread`× (a compressed strategy beside an uncompressed one), linear otherwise;
    one unit for the figure. Seeds without byte counts are left out (n counts the others). Returns False (and draws
    nothing) when no run has them."""
    panels = []
    for setting, by_strategy in runs.items():
        found = {s: [list(zip(m.megabytes, (a for _, a in m.curve), strict=True))
                     for m in by_strategy.get(s, []) if m.megabytes] for s in strategies}
        found = {s: curves for s, curves in found.items() if curves}
        if found:
            panels.append((setting, found))
    if not panels:
        return False
    unit, scale = traffic_unit((curve[-1][0] for _, found in panels for curves in found.values() for curve in curves),
                               by="largest")
    colors = _colors(strategies)
    figure, axes = _panels(len(panels))
    for axis, (setting, found) in zip(axes, panels, strict=True):
        totals = [float(np.mean([curve[-1][0] for curve in curves])) for curves in found.values()]
        logarithmic = min(totals) > 0 and max(totals) / min(totals) > log_spread
        for strategy, curves in found.items():
            grid, values = on_common_grid(curves)
            keep = grid > 0 if logarithmic else np.ones(len(grid), dtype=bool)  # log(0) has no place on the axis
            x = grid[keep] / scale
            axis.plot(x, values.mean(axis=0)[keep], color=colors[strategy], drawstyle="steps-post",
                      label=f"{strategy} (n={len(curves)})")
            axis.fill_between(x, values.min(axis=0)[keep], values.max(axis=0)[keep], color=colors[strategy],
                              alpha=0.2, linewidth=0, step="post")
        if target is not None:
            axis.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:g}")
        axis.set_title(setting, fontsize=9)
        style_accuracy_axis(axis, "global test accuracy")
        if logarithmic:
            axis.set_xscale("log")
        else:
            axis.xaxis.set_major_locator(matplotlib.ticker.AutoLocator())
        axis.set_xlabel(f"traffic, down + up ({unit}{', log scale' if logarithmic else ''})")
    figure.suptitle("accuracy against communicated bytes\nmean over seeds, band = min–max, dashed = target",
                    fontsize=10)
    save_figure(figure, path)
    return True


def plot_client_distributions(runs: Runs, strategies: Sequence[str], path: Path) -> list[tuple[float, float]]:
    """Final-round accuracy of every client on its validation split, pooled over seeds, one box per strategy; every
    panel has the same y range, so settings compare by eye. Returns each panel's y limits."""
    colors = _colors(strategies)
    figure, axes = _panels(len(runs))
    panels = [(setting, [s for s in strategies if by_strategy.get(s)], by_strategy)
              for setting, by_strategy in runs.items()]
    every = [a for _, names, by_strategy in panels for s in names for m in by_strategy[s] for a in m.client_accuracies]
    low = max(-0.02, min(every, default=0.0) - 0.05)
    for axis, (setting, names, by_strategy) in zip(axes, panels, strict=True):
        data = [[a for m in by_strategy[s] for a in m.client_accuracies] for s in names]
        boxes = axis.boxplot(data, patch_artist=True, showmeans=True, widths=0.6)
        for patch, name in zip(boxes["boxes"], names, strict=True):
            patch.set_facecolor(colors[name])
            patch.set_alpha(0.5)
        for index, values in enumerate(data, start=1):  # every client as a dot, jittered
            jitter = np.random.default_rng(index).uniform(-0.15, 0.15, len(values))
            axis.scatter(np.full(len(values), index) + jitter, values, s=6, color="black", alpha=0.4, zorder=3)
        axis.set_xticks(range(1, len(names) + 1), names)
        axis.set_title(setting, fontsize=9)
        axis.set_ylabel("client accuracy (final round)")
        axis.set_ylim(low, 1.02)
        axis.grid(alpha=0.3, axis="y")
    figure.suptitle("client accuracy distribution, all seeds pooled (triangle = mean; same y range in every panel)",
                    fontsize=10)
    limits = [tuple(float(v) for v in axis.get_ylim()) for axis in axes]
    save_figure(figure, path)
    return limits  # type: ignore[return-value]


# (strategy, setting, seed, weight per client row and round column; NaN = not sampled) of each panel drawn
WeightPanel = tuple[str, str, "int | None", list[list[float]]]


def plot_weights(runs: Runs, strategies: Sequence[str], path: Path) -> list[WeightPanel]:
    """Each weighting strategy's aggregation weight per client and round as a heatmap, for ONE seed per setting:
    "client 3" is a different slice of data in every seed (the partition depends on it), so weights are never
    averaged over seeds. Every panel shares one colour scale. Returns the panels drawn: none (and no file) when no
    strategy reports weights."""
    panels = []
    for strategy in strategies:
        for setting, by_strategy in runs.items():
            found = [m for m in by_strategy.get(strategy, []) if m.weights]
            if found:
                panels.append((strategy, setting, found[0].seed, found[0]))
    if not panels:
        return []
    drawn: list[WeightPanel] = []
    settings = len({setting for _, setting, _, _ in panels})
    top = max(w for *_, m in panels for row in m.weights.values() for w in row.values())
    # a row per strategy
    figure, axes = _panels(len(panels), width=5.0, height=3.4, columns=settings if settings <= 4 else 3)
    for axis, (strategy, setting, seed, metrics) in zip(axes, panels, strict=True):
        rounds = sorted(metrics.weights)
        clients = sorted({c for w in metrics.weights.values() for c in w})
        grid = np.full((len(clients), len(rounds)), np.nan)
        for j, r in enumerate(rounds):
            for i, c in enumerate(clients):
                if c in metrics.weights[r]:
                    grid[i, j] = metrics.weights[r][c]
        drawn.append((strategy, setting, seed, grid.tolist()))
        image = axis.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest", vmin=0.0, vmax=top,
                            extent=(rounds[0] - 0.5, rounds[-1] + 0.5, clients[-1] + 0.5, clients[0] - 0.5))
        figure.colorbar(image, ax=axis, label="weight")
        axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        axis.set_title(f"{strategy} · {setting} · seed={seed}", fontsize=9)
        axis.set_xlabel("round")
        axis.set_ylabel("client")
    figure.suptitle("aggregation weight per client and round, one seed (client ids differ between seeds); one colour "
                    "scale; blank = not sampled", fontsize=10)
    save_figure(figure, path)
    return drawn


def plot_disparity(runs: Runs, strategies: Sequence[str], path: Path) -> bool:
    """Each strategy's global and local disparity (bits, mean over seeds) as two stacked bars: global = unique +
    redundant, local = unique + masked (`fedsim.disparity`), so which kind of unfairness a strategy leaves reads at a
    glance. Returns False (and draws nothing) when no run has a sensitive attribute."""
    parts = ("disparity_unique", "disparity_redundant", "disparity_masked")
    panels = [(setting, [s for s in strategies
                         if any(getattr(m, parts[0]) is not None for m in by_strategy.get(s, []))], by_strategy)
              for setting, by_strategy in runs.items()]
    panels = [panel for panel in panels if panel[1]]
    if not panels:
        return False
    colors = {"unique": "#4c72b0", "redundant": "#dd8452", "masked": "#55a868"}
    figure, axes = _panels(len(panels))
    for axis, (setting, names, by_strategy) in zip(axes, panels, strict=True):
        means = {part: [float(np.mean([getattr(m, f"disparity_{part}") for m in by_strategy[s]
                                       if getattr(m, f"disparity_{part}") is not None])) for s in names]
                 for part in colors}
        x = np.arange(len(names))
        width = 0.34
        axis.bar(x - 0.2, means["unique"], width, color=colors["unique"], label="unique")
        axis.bar(x - 0.2, means["redundant"], width, bottom=means["unique"], color=colors["redundant"],
                 label="redundant (global only)")
        axis.bar(x + 0.2, means["unique"], width, color=colors["unique"])
        axis.bar(x + 0.2, means["masked"], width, bottom=means["unique"], color=colors["masked"],
                 label="masked (local only)")
        labels = [f"{name}\nglobal | local" for name in names]
        axis.set_xticks(x, labels, fontsize=8)
        axis.set_ylabel("disparity (bits)")
        axis.set_title(setting, fontsize=9)
        axis.grid(alpha=0.3, axis="y")
        axis.legend(fontsize=7)
    figure.suptitle("disparity of the final model on the clients' validation rows, mean over seeds: left bar "
                    "I(Z;Ŷ) global, right bar I(Z;Ŷ|S) local", fontsize=10)
    save_figure(figure, path)
    return True
