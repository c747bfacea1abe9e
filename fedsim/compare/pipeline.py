"""`fedsim compare` end to end: plan (expand, compose and validate every grid point before anything runs), sweep,
then the table, plots and report from the run folders."""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..build import client_optimizer, traits_of
from ..config import DEFAULT_PROXY_SIZE, compose_experiment, resolve_auto_values, validate
from ..errors import FedsimError
from ..partition_report import HEATMAP_FILE
from . import plots as compare_plots
from .grid import COMPRESSION_KEY, Grid, GridPoint, expand, share_proxy_set, slug
from .report import write_report
from .setup import optimizer_label, setup_table, strategy_table
from .sweep import PointCallback, RunFunction, SweepResult, run_folder, run_sweep
from .table import Row, RunMetrics, build_rows, load_run, write_tables

PLOTS_FOLDER = "plots"


@dataclass
class Plan:
    grid: Grid
    experiments: list[dict[str, Any]]  # composed and validated, one per grid point


def plan(overrides: Sequence[str]) -> Plan:
    """Expand the grid and compose + validate every point; the first bad point is a FedsimError before any run."""
    # the grid's fixed part, for its default seed: a strategy's or an encoding's own keys (`strategy.x=...`,
    # `compression.x=...`) need not exist in the default one, so they are left to each point's composition
    default = compose_experiment([o for o in overrides if "," not in o and not o.lstrip("+~").startswith(
        ("strategy", "seed=", COMPRESSION_KEY))])
    grid = expand(overrides, default_seed=int(default["seed"]))
    needs: dict[str, bool] = {}
    for point in grid.points:  # each strategy once, with the encoding of its first point (its own keys need it)
        strategy = point.strategy_name
        if strategy in needs:
            continue
        encoding = [o for o in point.overrides if o.split("=", 1)[0].lstrip("+~") == COMPRESSION_KEY]
        try:
            probe = compose_experiment([f"strategy={strategy}", *encoding, *grid.fixed])
        except FedsimError as error:
            raise FedsimError(f"strategy {strategy}: {error}") from None
        needs[strategy] = traits_of(probe).requires_server_data
    grid = share_proxy_set(grid, needs, DEFAULT_PROXY_SIZE)
    experiments = []
    for point in grid.points:
        try:
            experiment = resolve_auto_values(compose_experiment(point.overrides))
            validate(experiment)
        except FedsimError as error:
            where = f"{point.strategy} · {point.setting_label} · seed={point.seed}"
            raise FedsimError(f"grid point {where}: {error}") from None
        experiments.append(experiment)
    return Plan(grid, experiments)


def sweep(plan_: Plan, out: Path, run: RunFunction | None = None, on_point: PointCallback | None = None,
          show_progress: bool = True) -> SweepResult:
    return run_sweep(plan_.grid.points, plan_.experiments, out, run, on_point, show_progress)


def _by_setting(grid: Grid, runs: Mapping[GridPoint, RunMetrics]) -> dict[str, dict[str, list[RunMetrics]]]:
    grouped: dict[str, dict[str, list[RunMetrics]]] = {}
    for point in grid.points:
        if point in runs:
            grouped.setdefault(point.setting_label, {}).setdefault(point.strategy, []).append(runs[point])
    return grouped


def report(plan_: Plan, out: Path, target: float, command: str) -> tuple[list[Row], Path]:
    """Table (md, csv), plots and `report.html` from the finished run folders (a missing run is left out)."""
    out = Path(out)
    grid = plan_.grid
    runs = {}
    for point in grid.points:
        if (run_folder(out, point) / "summary.json").is_file():
            runs[point] = load_run(run_folder(out, point), target)
            runs[point].seed = point.seed
    if not runs:
        raise FedsimError(f"no finished run under {out}")
    optimizers = {(p.strategy, p.setting_label): optimizer_label(client_optimizer(e))
                  for p, e in zip(grid.points, plan_.experiments, strict=True)}
    rows = build_rows(((p.strategy, p.setting_label, p.seed, m) for p, m in runs.items()), optimizers)
    write_tables(rows, out, target)
    grouped = _by_setting(grid, runs)
    folder = out / PLOTS_FOLDER
    plots = [(folder / compare_plots.CURVES_PLOT, "global test accuracy per round (mean over seeds, band = min–max)"),
             (folder / compare_plots.CLIENTS_PLOT, "client accuracy, final round, all seeds pooled (same y range in "
                                                   "every panel)")]
    compare_plots.plot_accuracy_curves(grouped, grid.strategies, plots[0][0])
    compare_plots.plot_client_distributions(grouped, grid.strategies, plots[1][0])
    against = 1  # the plots against time and traffic follow the per-round curves, side by side in the report
    if compare_plots.plot_accuracy_vs_time(grouped, grid.strategies, folder / compare_plots.TIME_PLOT, target):
        plots.insert(against, (folder / compare_plots.TIME_PLOT, "global test accuracy against simulated time "
                               "(fedsim's device model; mean over seeds of their step curves, band = min–max, dashed "
                               "= target): time to target compares strategies whose rounds differ in length, "
                               "asynchronous ones too"))
        against += 1
    if compare_plots.plot_accuracy_vs_megabytes(grouped, grid.strategies, folder / compare_plots.TRAFFIC_PLOT, target):
        plots.insert(against, (folder / compare_plots.TRAFFIC_PLOT, "global test accuracy against communicated "
                               "megabytes, server to clients plus clients to server (mean over seeds of their step "
                               "curves, band = min–max, dashed = target; log scale when totals differ by more than "
                               "10×): traffic to target compares strategies that encode their updates differently"))
    if compare_plots.plot_weights(grouped, grid.strategies, folder / compare_plots.WEIGHTS_PLOT):
        unweighted = [s for s in grid.strategies if not any(m.weights for r in grouped.values() for m in r.get(s, []))]
        caption = ("aggregation weights of the strategies that report them, for one seed per setting: client ids "
                   "name different data in different seeds, so they are not averaged over seeds") + (
            f" ({', '.join(unweighted)} report no per-client weights)" if unweighted else "")
        plots.append((folder / compare_plots.WEIGHTS_PLOT, caption))
    if compare_plots.plot_disparity(grouped, grid.strategies, folder / compare_plots.DISPARITY_PLOT):
        plots.append((folder / compare_plots.DISPARITY_PLOT, "global and local disparity of the final model, split "
                      "into unique, redundant and masked disparity (bits, mean over seeds; 0 = fair)"))
    partitions = _partition_heatmaps(grid, out, runs)
    configs = {}
    for point, experiment in zip(grid.points, plan_.experiments, strict=True):
        if point.seed == grid.seeds[0]:
            title = f"{point.strategy} · {point.setting_label} (seed={point.seed}; other seeds differ only in seed)"
            configs[title] = yaml.safe_dump(experiment, sort_keys=False)
    notes = [*grid.notes, f"{len(runs)} of {len(grid.points)} runs finished."]
    setup = setup_table(plan_.experiments)
    strategies = strategy_table(grid.strategies, plan_.experiments, [p.strategy for p in grid.points])
    return rows, write_report(out, command, rows, target, plots, partitions, configs, notes, setup, strategies)


def _partition_heatmaps(grid: Grid, out: Path, runs: Mapping[GridPoint, RunMetrics]) -> dict[str, Path]:
    """Per setting, the label heatmap of its first finished run (every strategy of a seed has the same partition),
    copied to plots/."""
    found: dict[str, Path] = {}
    seen: set[str] = set()
    for point in grid.points:
        if point.setting_label in seen or point not in runs:
            continue
        source = run_folder(out, point) / HEATMAP_FILE
        if source.is_file():
            seen.add(point.setting_label)
            target = out / PLOTS_FOLDER / f"partition_{slug(point.setting_label)}_seed={point.seed}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            found[f"{point.setting_label} · seed={point.seed}"] = target
    return found
