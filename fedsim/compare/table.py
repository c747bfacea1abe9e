"""The comparison table: one row per strategy × setting, mean and Student-t 95% interval over seeds, a paired
per-seed difference against the first strategy, the best cell of each column marked within a setting, and `≈`
where that best is not significantly better than the runner-up.

What a cell says, so that a reader can trust it at a glance:
- `±` is a 95% confidence interval over seeds (`stats.CI_NOTE`), not a std; with one seed there is none.
- A best cell is only a win when a paired t-test over the seeds says so; otherwise it carries `≈`. Cells equal at
  the precision shown are all best and all `≈`.
- Seconds per round are the median over rounds 2…R (round 1 carries the process's warm-up, which only the first
  run of a sweep pays) and are never marked best: they depend on the machine and on what else ran on it.
- Time to target is simulated time (`clock`), which does not, so it is ranked like rounds to target; its cells are
  in one human unit per column, the csv in seconds.
- Traffic (`traffic`): megabytes sent and received to reach the target, and in the whole run, ranked like time to
  target (one unit per column, that of its largest value, with decimals enough for its smallest; the csv in MB); the
  uplink ratio compares what a round's client updates weigh with
  the setting's first strategy, seed by seed, and is a property of the codec, so it is not ranked.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.table import Table

from ..recorder import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, jain_index, write_atomic
from .clock import is_asynchronous, simulated_times, time_to_target, time_unit
from .stats import CI_NOTE, Interval, difference, mean_interval, paired_difference
from .traffic import cumulative_megabytes, mb_to_target, traffic_decimals, traffic_unit, uplink_bytes_per_round

TABLE_MD = "comparison.md"
TABLE_CSV = "comparison.csv"
LAST_K = 5  # rounds averaged for "last-k mean acc", as papers report a mean of the last rounds beside the final one
TIE = "≈"
TIE_NOTE = (f"{TIE}: not significantly better than the runner-up (paired t-test over seeds, 95%), or equal at the "
            "precision shown; with one seed every best is ≈")
MISSING_NOTE = "(k/n ✗): k of the n seeds never reached the target"
WARNING = "⚠"
TIME_NOTE = ("Simulated time to target: simulated time from the start to the end of the first round whose global test "
             "accuracy is ≥ {target:g}, by fedsim's device model (docs/devices.md), averaged over the seeds that "
             "reached it, with the same (k/n ✗); one unit per column (the csv: seconds). Unlike s / round it does not "
             "depend on the machine the sweep ran on, so it is ranked. —: runs recorded without the simulated clock "
             "(older fedsim), left out of n.")
TRAFFIC_NOTE = ("Traffic to target: megabytes (10⁶ bytes) the server sent to and received from the clients, as Flower "
                "serialises the messages, from the start (client discovery included) to the end of the first round "
                "whose global test accuracy is ≥ {target:g}, averaged over the seeds that reached it, with the same "
                "(k/n ✗); total traffic: the same count at the end of the last round. One unit per column (the csv: "
                "MB). —: runs recorded without byte counts (older fedsim), left out of n.")
RATIO_NOTE = ("Uplink ratio: mean bytes the clients sent per trained round for the setting's first strategy divided by "
              "this row's, seed by seed (so 4.0 = a quarter of the baseline's uplink), mean ± interval over the seeds "
              "both have; it describes the update encoding (`compression=...`), so it is not ranked.")
ASYNC_NOTE = ("Asynchronous strategies (FedAsync, FedBuff): a row of their metrics is not a synchronous round but "
              "`concurrency` client updates, so their rounds to target count rows; simulated time to target is the "
              "fair comparison between synchronous and asynchronous strategies.")


@dataclass
class RunMetrics:
    """What the table and plots need from one run folder."""

    final_accuracy: float
    best_accuracy: float
    worst10: float | None
    client_std: float | None
    rounds_to_target: int | None
    seconds_per_round: float
    curve: list[tuple[int, float]]  # (round, global test accuracy), round 0 = initial model
    client_accuracies: list[float]  # final round, per client
    weights: dict[int, dict[int, float]] = field(default_factory=dict)  # round -> client -> aggregation weight
    last_k_accuracy: float | None = None  # mean global test accuracy over the last `last_k` trained rounds
    last_k: int = 0
    final_loss: float | None = None  # global test loss of the final model
    jain: float | None = None  # Jain's index of the final client accuracies (1 = all equal)
    test_spd: float | None = None  # |statistical parity difference| of the final model on the test split
    test_eod: float | None = None  # |equal opportunity difference|, same
    # the final model's disparity over the clients' validation rows, in bits (`fedsim.disparity`)
    disparity_global: float | None = None  # I(Z;Ŷ)
    disparity_local: float | None = None  # I(Z;Ŷ|S)
    disparity_unique: float | None = None
    disparity_redundant: float | None = None
    disparity_masked: float | None = None
    # a strategy that reports contributions (`contribution_client_*`, Fair-yet-Equal): Pearson correlations over
    # clients of the final contribution with the client's label-noise rate, its times selected, its final accuracy
    corr_contribution_noise: float | None = None
    corr_contribution_selected: float | None = None
    corr_contribution_accuracy: float | None = None
    seed: int | None = None
    # the virtual clock (`clock`): sim_time of each `curve` row, empty for a run recorded without one
    times: list[float] = field(default_factory=list)
    time_to_target: float | None = None  # sim_time of the round `rounds_to_target` names
    # the byte counts (`traffic`): cumulative MB (down + up) of each `curve` row, empty for a run recorded without them
    megabytes: list[float] = field(default_factory=list)
    mb_to_target: float | None = None  # megabytes at the end of the round `rounds_to_target` names
    total_megabytes: float | None = None  # megabytes at the end of the last row
    uplink_bytes: float | None = None  # mean bytes_up of a trained round


def _abs(value: object) -> float | None:
    return None if value is None else abs(float(value))  # type: ignore[arg-type]


def round_seconds(rows: Sequence[Mapping[str, str]]) -> float | None:
    """Median seconds of rounds 2…R (round 0 is setup, round 1 the warm-up); round 1 alone when it is the only one."""
    timed = [(int(row["round"]), float(row["round_seconds"])) for row in rows if row.get("round_seconds")]
    steady = [s for r, s in timed if r >= 2] or [s for r, s in timed if r == 1]
    return statistics.median(steady) if steady else None


def load_run(folder: Path, target: float, last_k: int = LAST_K) -> RunMetrics:
    """Read `summary.json` and `metrics.csv` of a finished run."""
    folder = Path(folder)
    summary = json.loads((folder / SUMMARY_FILE).read_text())
    with open(folder / METRICS_FILE, newline="") as stream:
        rows = list(csv.DictReader(stream))
    curve = [(int(row["round"]), float(row["test_accuracy"])) for row in rows]
    reached = [r for r, accuracy in curve if r > 0 and accuracy >= target]
    trained = [row for row in rows if int(row["round"]) > 0] or rows
    seconds = round_seconds(rows)
    if "final_client_accuracy" in summary:
        clients = [float(v) for v in summary["final_client_accuracy"].values()]
    else:  # runs from before the summary listed them: the last round's client evaluation
        clients = [float(v) for k, v in rows[-1].items() if k.startswith("acc_client_") and v not in ("", None)]
    weights = {}
    for row in trained:
        found = {int(k.rsplit("_", 1)[1]): float(v) for k, v in row.items() if k.startswith("weight_client_") and v}
        if found:
            weights[int(row["round"])] = found
    stats = summary.get("client_accuracy", {})
    tail = [float(row["test_accuracy"]) for row in trained[-last_k:]]
    fairness = summary.get("fairness") or {}
    disparity = fairness.get("disparity") or {}
    loss = summary.get("final_loss")
    times = simulated_times(rows) or []
    megabytes = cumulative_megabytes(rows) or []
    return RunMetrics(
        final_accuracy=float(summary["final_accuracy"]),
        best_accuracy=float(summary["best_accuracy"]),
        worst10=stats.get("worst10"),
        client_std=stats.get("std"),
        rounds_to_target=reached[0] if reached else None,
        seconds_per_round=seconds if seconds is not None else float(summary["wall_seconds"]) / max(1, len(trained)),
        curve=curve,
        client_accuracies=clients,
        weights=weights,
        last_k_accuracy=statistics.fmean(tail) if tail else None,
        last_k=len(tail),
        final_loss=None if loss is None else float(loss),
        jain=stats.get("jain", jain_index(clients) if clients else None),
        test_spd=_abs(fairness.get("test_spd")),
        test_eod=_abs(fairness.get("test_eod")),
        **{f"disparity_{name}": _number(disparity.get(name))
           for name in ("global", "local", "unique", "redundant", "masked")},
        **contribution_correlations(rows[-1], summary, _config(folder)),
        seed=None if summary.get("seed") is None else int(summary["seed"]),
        times=times,
        time_to_target=time_to_target(curve, times, target),
        megabytes=megabytes,
        mb_to_target=mb_to_target(curve, megabytes, target),
        total_megabytes=megabytes[-1] if megabytes else None,
        uplink_bytes=uplink_bytes_per_round(rows),
    )


def _number(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def _config(folder: Path) -> dict:
    path = folder / CONFIG_FILE
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


def _pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson's r; None with fewer than three clients or a constant side (no correlation to speak of)."""
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def contribution_correlations(last_row: Mapping[str, str], summary: Mapping[str, Any], config: Mapping[str, Any]
                              ) -> dict[str, float | None]:
    """Fair-yet-Equal's fairness checks (Lin et al., ICML 2023) from a run's last metrics row: the Pearson
    correlation over clients of each client's contribution with its label-noise rate (expected negative), with how
    often it was selected (positive: more contribution, more reward) and with its final accuracy (positive)."""
    contribution = {int(key.rsplit("_", 1)[1]): float(value) for key, value in last_row.items()
                    if key.startswith("contribution_client_") and value not in ("", None)}
    empty = {"corr_contribution_noise": None, "corr_contribution_selected": None, "corr_contribution_accuracy": None}
    if not contribution:
        return empty
    clients = sorted(contribution)
    psi = [contribution[pid] for pid in clients]
    from ..data.noise import label_noise_rates

    rates = label_noise_rates(config)
    selected = {int(key.rsplit("_", 1)[1]): float(value) for key, value in last_row.items()
                if key.startswith("selected_client_") and value not in ("", None)}
    accuracy = {int(pid): float(value) for pid, value in (summary.get("final_client_accuracy") or {}).items()}
    return {
        "corr_contribution_noise": _pearson(psi, [rates.get(pid, 0.0) for pid in clients]),
        "corr_contribution_selected": _pearson(psi, [selected[pid] for pid in clients])
        if all(pid in selected for pid in clients) else None,
        "corr_contribution_accuracy": _pearson(psi, [accuracy[pid] for pid in clients])
        if all(pid in accuracy for pid in clients) else None,
    }


@dataclass(frozen=True)
class Column:
    key: str  # RunMetrics attribute
    title: str
    higher_is_better: bool
    digits: int = 3
    ranked: bool = True  # marked best / ≈ within a setting
    optional: bool = False  # shown only when some run has a value (group fairness needs a sensitive attribute)
    compact: bool = True  # in the report's table (comparison.md and .csv have every column)
    # in the table printed at the end of `fedsim compare` (a compact column may still be left out)
    terminal: bool = True
    short: str = ""  # its header there
    # a RunMetrics attribute without which a seed's value is unknown rather than missing (time needs the clock):
    # such seeds are left out of the cell instead of counting as "never reached"
    needs: str = ""
    duration: bool = False  # seconds, shown in one human unit (s, min, h) for the whole column
    # megabytes, shown in one unit (kB, MB, GB) for the whole column, with the decimals its smallest value needs
    volume: bool = False
    # a RunMetrics attribute compared with the setting's first strategy: the cell is, seed by seed, the baseline's
    # value divided by this row's (over the seeds both have a positive value for)
    ratio_of: str = ""


COLUMNS = (
    Column("final_accuracy", "final acc", True, short="final acc"),
    Column("last_k_accuracy", "mean acc, last {k} rounds", True, short="last-{k} acc"),
    Column("best_accuracy", "best acc (any round)", True, compact=False),
    Column("final_loss", "test loss", False, terminal=False),
    Column("worst10", "worst-10% client acc", True, short="worst-10%"),
    Column("client_std", "client acc std", False, compact=False),
    Column("jain", "Jain's index (client acc)", True, short="Jain"),
    Column("test_spd", "|SPD| (test)", False, optional=True, short="|SPD|"),
    Column("test_eod", "|EOD| (test)", False, optional=True, short="|EOD|"),
    Column("disparity_global", "global disparity I(Z;Ŷ), bits", False, 4, optional=True, short="I(Z;Ŷ)"),
    Column("disparity_local", "local disparity I(Z;Ŷ|S), bits", False, 4, optional=True, short="I(Z;Ŷ|S)"),
    Column("disparity_unique", "unique disparity, bits", False, 4, optional=True, compact=False),
    Column("disparity_redundant", "redundant disparity, bits", False, 4, optional=True, compact=False),
    Column("disparity_masked", "masked disparity, bits", False, 4, optional=True, compact=False),
    Column("corr_contribution_noise", "r(contribution, label noise)", False, 2, ranked=False, optional=True,
           terminal=False),
    Column("corr_contribution_selected", "r(contribution, times selected)", True, 2, ranked=False, optional=True,
           terminal=False),
    Column("corr_contribution_accuracy", "r(contribution, client acc)", True, 2, ranked=False, optional=True,
           terminal=False),
    Column("rounds_to_target", "rounds to target", False, 1, short="rounds→target"),
    Column("time_to_target", "simulated time to target", False, 1, optional=True, short="time→target",
           needs="times", duration=True),
    Column("mb_to_target", "traffic to target (down + up)", False, 1, optional=True, short="traffic→target",
           needs="megabytes", volume=True),
    Column("total_megabytes", "total traffic (down + up)", False, 1, optional=True, terminal=False,
           needs="megabytes", volume=True),
    Column("uplink_ratio", "uplink ratio (first strategy's bytes ÷ this)", True, 1, ranked=False, optional=True,
           short="uplink ×", ratio_of="uplink_bytes"),
    Column("seconds_per_round", "s / round", False, 2, ranked=False, terminal=False),
)
DELTA_KEY = "final_accuracy"  # the paired difference against the baseline strategy is of this column


@dataclass
class Cell:
    by_seed: dict[int, float]  # over the seeds that have a value (for rounds to target: the seeds that reached it)
    missing: int = 0  # seeds without a value (target not reached)
    best: bool = False
    tie: bool = False  # best, but not significantly better than the runner-up (or equal to it as shown)
    # a duration or volume column's unit, one for the column (`clock.time_unit`, `traffic.traffic_unit`); values stay
    # in seconds or megabytes
    unit: str = ""
    scale: float = 1.0  # seconds or megabytes per `unit`
    decimals: int | None = None  # a volume column's decimals, one for the column (else the column's digits)

    @property
    def values(self) -> list[float]:
        return list(self.by_seed.values())

    @property
    def interval(self) -> Interval | None:
        return mean_interval(self.values) if self.values else None

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        """Sample std over seeds (n−1); None below two seeds."""
        if len(self.values) < 2:
            return None
        return statistics.stdev(self.values) if all(math.isfinite(v) for v in self.values) else math.nan

    def text(self, digits: int) -> str:
        digits = digits if self.decimals is None else self.decimals
        interval = self.interval
        unit = f" {self.unit}" if self.unit else ""
        if interval is None:
            shown = "—"
        elif interval.half_width is None:
            shown = f"{interval.mean / self.scale:.{digits}f}{unit}"
        else:
            shown = f"{interval.mean / self.scale:.{digits}f} ± {interval.half_width / self.scale:.{digits}f}{unit}"
        if self.missing:
            shown += f" ({self.missing}/{self.missing + len(self.values)} ✗)"
        return shown


@dataclass
class Row:
    strategy: str
    setting: str
    seeds: list[int]
    cells: dict[str, Cell]
    baseline: str = ""  # the strategy `delta` is measured against (the setting's first); == strategy for itself
    delta: Interval | None = None  # paired per-seed difference of final acc against the baseline
    optimizer: str = ""  # the client optimiser its runs used
    optimizer_differs: bool = False  # another strategy of the same setting runs another client optimiser
    last_k: int = LAST_K  # rounds its last-k mean averaged (fewer only when its runs had fewer rounds)

    def delta_text(self, digits: int = 3) -> str:
        if self.baseline == self.strategy:
            return "baseline"
        if self.delta is None:
            return "—"
        shown = f"{self.delta.mean:+.{digits}f}"
        if self.delta.half_width is not None:
            shown += f" ± {self.delta.half_width:.{digits}f}"
            if self.delta.excludes_zero:
                shown += " *"
        return shown + ("" if self.delta.n == len(self.seeds) else f" (n={self.delta.n})")


def build_rows(runs: Iterable[tuple[str, str, int, RunMetrics]], optimizers: Mapping[tuple[str, str], str] | None = None
               ) -> list[Row]:
    """Rows in order of first appearance of (strategy, setting); `runs` holds (strategy, setting, seed, metrics),
    `optimizers` the client optimiser label of each (strategy, setting)."""
    grouped: dict[tuple[str, str], list[tuple[int, RunMetrics]]] = {}
    for strategy, setting, seed, metrics in runs:
        grouped.setdefault((strategy, setting), []).append((seed, metrics))
    rows = []
    for (strategy, setting), entries in grouped.items():
        cells = {}
        for column in COLUMNS:
            if column.ratio_of:  # against the baseline, once the baseline is known
                cells[column.key] = Cell({})
                continue
            values = {seed: getattr(m, column.key) for seed, m in entries
                      if not column.needs or getattr(m, column.needs)}
            present = {seed: float(v) for seed, v in values.items() if v is not None}
            cells[column.key] = Cell(present, missing=len(values) - len(present))
        label = (optimizers or {}).get((strategy, setting), "")
        rows.append(Row(strategy, setting, [seed for seed, _ in entries], cells, optimizer=label,
                        last_k=max(m.last_k for _, m in entries) or LAST_K))
    for setting in dict.fromkeys(row.setting for row in rows):
        group = [row for row in rows if row.setting == setting]
        baseline = group[0]
        for row in group:
            row.baseline = baseline.strategy
            if row is not baseline:
                row.delta = paired_difference(row.cells[DELTA_KEY].by_seed, baseline.cells[DELTA_KEY].by_seed)
            for column in COLUMNS:
                if column.ratio_of:
                    row.cells[column.key] = ratio_cell(grouped[(row.strategy, setting)],
                                                       grouped[(baseline.strategy, setting)], column.ratio_of)
        labels = {row.optimizer for row in group if row.optimizer}
        for row in group:
            row.optimizer_differs = len(labels) > 1
    for column in COLUMNS:
        cells = [row.cells[column.key] for row in rows]
        means = [cell.mean for cell in cells if cell.values]
        if column.duration:
            unit, scale = time_unit(means)
            for cell in cells:
                cell.unit, cell.scale = unit, scale
        elif column.volume:  # compressed and plain traffic can differ 1000×: the large unit, enough decimals
            unit, scale = traffic_unit(means, by="largest")
            decimals = traffic_decimals(means, scale, column.digits)
            for cell in cells:
                cell.unit, cell.scale, cell.decimals = unit, scale, decimals
    mark_best(rows)
    return rows


def ratio_cell(entries: Sequence[tuple[int, RunMetrics]], baseline: Sequence[tuple[int, RunMetrics]], key: str) -> Cell:
    """The baseline's `key` ÷ this row's, per seed both have a positive value for (a run without it is unknown, not
    missing)."""
    reference = {seed: getattr(m, key) for seed, m in baseline}
    ratios = {}
    for seed, metrics in entries:
        mine, theirs = getattr(metrics, key), reference.get(seed)
        if mine and theirs and mine > 0 and theirs > 0:
            ratios[seed] = float(theirs) / float(mine)
    return Cell(ratios)


def _shown(cell: Cell, column: Column) -> tuple[int, str]:
    digits = column.digits if cell.decimals is None else cell.decimals
    return cell.missing, f"{cell.mean / cell.scale:.{digits}f}"


def mark_best(rows: Sequence[Row]) -> None:
    """Per setting and ranked column: mark the best cell (every cell equal to it as shown, with `≈`), and `≈` on a
    lone best unless a t-test over seeds (paired) says it beats the runner-up. For rounds to target, fewer seeds
    that never reached the target come first."""
    for setting in dict.fromkeys(row.setting for row in rows):
        group = [row for row in rows if row.setting == setting]
        for column in COLUMNS:
            if not column.ranked:
                continue
            # a diverged run's value (loss inf or NaN) is never the best
            cells = [row.cells[column.key] for row in group
                     if row.cells[column.key].values and math.isfinite(row.cells[column.key].mean)]
            if not cells:
                continue
            sign = -1.0 if column.higher_is_better else 1.0
            cells.sort(key=lambda cell: (cell.missing, sign * cell.mean))
            equal = [cell for cell in cells if _shown(cell, column) == _shown(cells[0], column)]
            for cell in equal:
                cell.best, cell.tie = True, len(equal) > 1
            if len(equal) == 1 and len(cells) > 1:
                best, runner = cells[0], cells[1]
                if runner.missing == best.missing:
                    best.tie = not difference(best.by_seed, runner.by_seed).excludes_zero


def visible_columns(rows: Sequence[Row], compact: bool = False) -> list[Column]:
    """The columns worth showing: optional ones only when a run has a value; the terminal and the report get the
    compact set, which fits a screen's width."""
    return [c for c in COLUMNS if (not c.optional or any(_known(row.cells[c.key], c) for row in rows))
            and (c.compact or not compact)]


def _known(cell: Cell, column: Column) -> bool:
    """A seed has a value, or (for a column that `needs` something) a value known to be missing: a time to target
    never reached is worth showing as `— (n/n ✗)`, a run without a clock is not. A ratio to the baseline is worth
    showing once it is not 1 as shown (some row sends more or less than the baseline)."""
    if column.ratio_of:
        return cell.mean is not None and f"{cell.mean:.{column.digits}f}" != f"{1.0:.{column.digits}f}"
    return bool(cell.values) or bool(column.needs and cell.missing)


def column_title(column: Column, rows: Sequence[Row], short: bool = False) -> str:
    title = column.short if short and column.short else column.title
    return title.format(k=max((row.last_k for row in rows), default=LAST_K))


def delta_title(rows: Sequence[Row], short: bool = False) -> str:
    baselines = " / ".join(dict.fromkeys(row.baseline for row in rows)) or "first"
    return f"Δ vs {baselines}" if short else f"Δ final acc vs {baselines} (paired)"


def optimizer_warning(rows: Sequence[Row]) -> str | None:
    """One line when, in some setting, the strategies compared run different client optimisers."""
    for setting in dict.fromkeys(row.setting for row in rows):
        group = [row for row in rows if row.setting == setting and row.optimizer]
        if len({row.optimizer for row in group}) > 1:
            listed = "; ".join(f"{row.strategy}: {row.optimizer}" for row in group)
            return (f"{WARNING} The strategies run different client optimisers, so their differences are partly the "
                    f"optimiser's ({listed}).")
    return None


def legend(rows: Sequence[Row], target: float, compact: bool = False) -> list[str]:
    """What every number of the table is, one sentence each (under the Markdown and the report's table)."""
    columns = {column.key for column in visible_columns(rows, compact)}
    k = max((row.last_k for row in rows), default=LAST_K)
    seeds = max((len(row.seeds) for row in rows), default=0)
    notes = [
        f"Mean over seeds; {CI_NOTE}." + (" One seed: no interval, and no win is significant." if seeds < 2 else ""),
        f"{delta_title(rows)}: the mean of the per-seed differences of final accuracy to the setting's first strategy "
        "(for one seed both see the same partition, initial model and client sampling) ± its 95% t interval; "
        "* = the interval excludes 0.",
        f"Bold: best of its setting. {TIE_NOTE}.",
        f"Mean acc, last {k} rounds: global test accuracy averaged over the last {k} rounds, steadier than the final "
        "round alone." + ("" if "best_accuracy" not in columns else
                          " Best acc (any round): the peak over rounds, picked on the test set, so optimistic."),
        "Client columns: the final model on every client's validation split; Jain's index (Σa)²/(n·Σa²) of the "
        "client accuracies is 1 when all clients are equally served.",
    ]
    if columns & {"test_spd", "test_eod"}:
        notes.append("|SPD|, |EOD|: statistical parity and equal opportunity differences of the final global model on "
                     "the test split between the sensitive groups (0 = parity).")
    if any(key.startswith("disparity_") for key in columns):
        notes.append("Disparity (bits), the final model's predictions Ŷ on the clients' validation rows, Z the "
                     "sensitive attribute, S the client: global I(Z;Ŷ) = unique + redundant, local I(Z;Ŷ|S) = "
                     "unique + masked (partial information decomposition, Hamman & Dutta 2024; 0 = fair).")
    if any(key.startswith("corr_contribution_") for key in columns):
        notes.append("r(contribution, ·): Pearson correlation over clients of each client's estimated contribution "
                     "with its label-noise rate (a fair estimate is negative), times selected and final accuracy "
                     "(a fair reward is positive); not ranked.")
    notes.append(f"Rounds to target: first round whose global test accuracy is ≥ {target:g}, averaged over the seeds "
                 f"that reached it; {MISSING_NOTE}.")
    if "time_to_target" in columns:
        notes.append(TIME_NOTE.format(target=target))
    if columns & {"mb_to_target", "total_megabytes"}:
        notes.append(TRAFFIC_NOTE.format(target=target))
    if "uplink_ratio" in columns:
        notes.append(RATIO_NOTE)
    if any(is_asynchronous(row.strategy) for row in rows):
        notes.append(ASYNC_NOTE)
    notes.append("s / round: median over rounds 2…R (round 1 carries the process warm-up, which only the first run "
                 "of a sweep pays); not ranked, as it depends on the machine and what else ran on it.")
    warning = optimizer_warning(rows)
    if warning:
        notes.append(warning)
    return notes


def _cell_text(cell: Cell, column: Column) -> str:
    return cell.text(column.digits) + (f" {TIE}" if cell.tie else "")


def table_cells(row: Row, columns: Sequence[Column]) -> list[tuple[str, bool]]:
    """(text, best) of the row's metric cells, with the paired Δ after final accuracy."""
    cells = []
    for column in columns:
        cell = row.cells[column.key]
        cells.append((_cell_text(cell, column), cell.best))
        if column.key == DELTA_KEY:
            cells.append((row.delta_text(column.digits), False))
    return cells


def headers(rows: Sequence[Row], columns: Sequence[Column], short: bool = False) -> list[str]:
    titles = []
    for column in columns:
        titles.append(column_title(column, rows, short))
        if column.key == DELTA_KEY:
            titles.append(delta_title(rows, short))
    return titles


def _optimizer_text(row: Row) -> str:
    return (f"{WARNING} " if row.optimizer_differs else "") + (row.optimizer or "—")


TERMINAL_NOTE = ("mean ± 95% t-interval over seeds · Δ: paired per-seed difference of final acc, "
                 "* = its interval excludes 0 · "
                 f"bold: best of its setting, {TIE} = not significantly better than the runner-up · legend, test loss, "
                 f"seconds per round and every other column: {TABLE_MD}, report.html")


def rich_table(rows: Sequence[Row], target: float, title: str = "strategy comparison") -> Table:
    """The table printed at the end of a sweep: the main columns, cells never wrapped (headers are) and a short
    legend; a strategy whose client optimiser differs from the others' is marked ⚠ and the legend names every
    strategy's (the files carry everything)."""
    columns = [c for c in visible_columns(rows, compact=True) if c.terminal]
    warning = optimizer_warning(rows)
    caption = TERMINAL_NOTE + (f"\n[yellow]{warning}[/]" if warning else "")
    table = Table(title=title, header_style="bold", caption=caption, caption_justify="left")
    body = [[(row.strategy + (f" {WARNING}" if row.optimizer_differs else ""), False), (row.setting, False),
             (str(len(row.seeds)), False), *table_cells(row, columns)] for row in rows]
    titles = ["strategy", "setting", "seeds", *headers(rows, columns, short=True)]
    for index, header in enumerate(titles):
        table.add_column(header, justify="left" if index < 2 else "right",
                         min_width=max(len(line[index][0]) for line in body))
    previous = None
    for row, line in zip(rows, body, strict=True):
        if previous is not None and row.setting != previous:
            table.add_section()
        previous = row.setting
        shown = [f"[bold green]{text}[/]" if best else text for text, best in line]
        if row.optimizer_differs:
            shown[0] = f"[yellow]{shown[0]}[/]"
        table.add_row(*shown)
    return table


def _md(text: str) -> str:
    return text.replace("|", "\\|")  # a bare | would end the Markdown cell (|SPD|)


def markdown_table(rows: Sequence[Row], target: float) -> str:
    columns = visible_columns(rows)
    titles = ["strategy", "setting", "seeds", *headers(rows, columns), "client optimiser"]
    lines = ["| " + " | ".join(_md(t) for t in titles) + " |", "|" + "---|" * 2 + "---:|" * (len(titles) - 3) + "---|"]
    for row in rows:
        cells = []
        for text, best in table_cells(row, columns):
            if best:  # bold the number, keep ≈ outside the bold so it stands out
                number, tie = (text[: -len(TIE) - 1], f" {TIE}") if text.endswith(TIE) else (text, "")
                text = f"**{number}**{tie}"
            cells.append(text)
        cells = [row.strategy, row.setting, str(len(row.seeds)), *cells, _optimizer_text(row)]
        lines.append("| " + " | ".join(_md(c) for c in cells) + " |")
    lines.append("")
    lines += [f"- {note}" for note in legend(rows, target)]
    return "\n".join(lines) + "\n"


def csv_table(rows: Sequence[Row]) -> str:
    """Every column, always (a stable header): mean, sample std, 95% interval half-width, n, best, tie."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    header = ["strategy", "setting", "seeds", "client_optimizer", "optimizer_differs"]
    for column in COLUMNS:
        header += [f"{column.key}_{part}" for part in ("mean", "std", "ci95", "n", "best", "tie")]
    header += ["rounds_to_target_not_reached", "last_k", "delta_baseline", "delta_final_accuracy_mean",
               "delta_final_accuracy_ci95", "delta_n", "time_to_target_not_reached", "mb_to_target_not_reached"]
    writer.writerow(header)

    def number(value: float | None) -> object:
        return "" if value is None else value

    for row in rows:
        line: list[object] = [row.strategy, row.setting, " ".join(str(s) for s in row.seeds), row.optimizer,
                              int(row.optimizer_differs)]
        for column in COLUMNS:
            cell = row.cells[column.key]
            interval = cell.interval
            line += [number(cell.mean), number(cell.std), number(interval.half_width if interval else None),
                     len(cell.values), int(cell.best), int(cell.tie)]
        delta = row.delta
        line += [row.cells["rounds_to_target"].missing, row.last_k, row.baseline,
                 number(delta.mean if delta else (0.0 if row.baseline == row.strategy else None)),
                 number(delta.half_width if delta else None), delta.n if delta else "",
                 row.cells["time_to_target"].missing, row.cells["mb_to_target"].missing]
        writer.writerow(line)
    return buffer.getvalue()


def write_tables(rows: Sequence[Row], out: Path, target: float) -> dict[str, Path]:
    paths = {"md": Path(out) / TABLE_MD, "csv": Path(out) / TABLE_CSV}
    write_atomic(paths["md"], markdown_table(rows, target).encode())
    write_atomic(paths["csv"], csv_table(rows).encode())
    return paths
