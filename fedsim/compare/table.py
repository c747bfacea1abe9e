"""The comparison table: one row per strategy × setting, mean ± std over seeds, the best cell of each column marked
within a setting, and a `≈` where the runner-up is closer than the seed spread.

Stds are population stds over seeds (`statistics.pstdev`), as in the bench scripts.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.table import Table

from ..results import METRICS_FILE, SUMMARY_FILE, write_atomic

TABLE_MD = "comparison.md"
TABLE_CSV = "comparison.csv"
TIE = "≈"
TIE_NOTE = f"{TIE}: the runner-up is within the seed spread (|Δ mean| < the larger of the two stds)"
MISSING_NOTE = "(k/n ✗): k of the n seeds never reached the target"


def mean_std(values: Sequence[float], digits: int = 3) -> str:
    """`mean ± population std` of `values`."""
    return f"{statistics.mean(values):.{digits}f} ± {statistics.pstdev(values):.{digits}f}"


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


def _float(text: str | None) -> float | None:
    return float(text) if text not in (None, "") else None


def load_run(folder: Path, target: float) -> RunMetrics:
    """Read `summary.json` and `metrics.csv` of a finished run."""
    folder = Path(folder)
    summary = json.loads((folder / SUMMARY_FILE).read_text())
    with open(folder / METRICS_FILE, newline="") as stream:
        rows = list(csv.DictReader(stream))
    curve = [(int(row["round"]), float(row["test_accuracy"])) for row in rows]
    reached = [r for r, accuracy in curve if r > 0 and accuracy >= target]
    trained = [row for row in rows if int(row["round"]) > 0] or rows
    seconds = [float(row["round_seconds"]) for row in trained if row.get("round_seconds")]
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
    return RunMetrics(
        final_accuracy=float(summary["final_accuracy"]),
        best_accuracy=float(summary["best_accuracy"]),
        worst10=stats.get("worst10"),
        client_std=stats.get("std"),
        rounds_to_target=reached[0] if reached else None,
        seconds_per_round=statistics.mean(seconds) if seconds else float(summary["wall_seconds"]) / max(1, len(trained)),
        curve=curve,
        client_accuracies=clients,
        weights=weights,
    )


@dataclass(frozen=True)
class Column:
    key: str  # RunMetrics attribute
    title: str
    higher_is_better: bool
    digits: int = 3


COLUMNS = (
    Column("final_accuracy", "final acc", True),
    Column("best_accuracy", "best acc", True),
    Column("worst10", "worst-10% client acc", True),
    Column("client_std", "client acc std", False),
    Column("rounds_to_target", "rounds to target", False, 1),
    Column("seconds_per_round", "s / round", False, 2),
)


@dataclass
class Cell:
    values: list[float]  # over the seeds that have a value (for rounds to target: the seeds that reached it)
    missing: int = 0  # seeds without a value (target not reached)
    best: bool = False
    tie: bool = False  # best, but the runner-up is within the seed spread

    @property
    def mean(self) -> float | None:
        return statistics.mean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.pstdev(self.values) if self.values else None

    def text(self, digits: int) -> str:
        shown = mean_std(self.values, digits) if self.values else "—"
        if self.missing:
            shown += f" ({self.missing}/{self.missing + len(self.values)} ✗)"
        return shown


@dataclass
class Row:
    strategy: str
    setting: str
    seeds: list[int]
    cells: dict[str, Cell]


def build_rows(runs: Iterable[tuple[str, str, int, RunMetrics]]) -> list[Row]:
    """Rows in order of first appearance of (strategy, setting); `runs` holds (strategy, setting, seed, metrics)."""
    grouped: dict[tuple[str, str], list[tuple[int, RunMetrics]]] = {}
    for strategy, setting, seed, metrics in runs:
        grouped.setdefault((strategy, setting), []).append((seed, metrics))
    rows = []
    for (strategy, setting), entries in grouped.items():
        cells = {}
        for column in COLUMNS:
            values = [getattr(m, column.key) for _, m in entries]
            present = [float(v) for v in values if v is not None]
            cells[column.key] = Cell(present, missing=len(values) - len(present))
        rows.append(Row(strategy, setting, [seed for seed, _ in entries], cells))
    mark_best(rows)
    return rows


def mark_best(rows: Sequence[Row]) -> None:
    """Per setting and column: mark the best cell, and a tie when the runner-up is within the seed spread. For rounds
    to target, fewer seeds that never reached the target come first."""
    for setting in dict.fromkeys(row.setting for row in rows):
        group = [row for row in rows if row.setting == setting]
        for column in COLUMNS:
            cells = [row.cells[column.key] for row in group if row.cells[column.key].values]
            sign = -1.0 if column.higher_is_better else 1.0
            cells.sort(key=lambda cell: (cell.missing, sign * cell.mean))
            if not cells:
                continue
            best = cells[0]
            best.best = True
            if len(cells) > 1:
                runner = cells[1]
                spread = max(best.std or 0.0, runner.std or 0.0)
                best.tie = runner.missing == best.missing and abs(best.mean - runner.mean) < spread


def _headers() -> list[str]:
    return ["strategy", "setting", "seeds"] + [column.title for column in COLUMNS]


def rich_table(rows: Sequence[Row], target: float, title: str = "strategy comparison") -> Table:
    table = Table(title=title, header_style="bold",
                  caption=f"mean ± std over seeds · rounds to target: first round with global test accuracy ≥ {target:g}"
                          f" · {MISSING_NOTE} · bold: best in its setting · {TIE_NOTE}")
    for index, header in enumerate(_headers()):
        table.add_column(header, justify="left" if index < 2 else "right", no_wrap=index < 2)
    previous = None
    for row in rows:
        if previous is not None and row.setting != previous:
            table.add_section()
        previous = row.setting
        cells = []
        for column in COLUMNS:
            cell = row.cells[column.key]
            text = cell.text(column.digits) + (f" {TIE}" if cell.tie else "")
            cells.append(f"[bold green]{text}[/]" if cell.best else text)
        table.add_row(row.strategy, row.setting, str(len(row.seeds)), *cells)
    return table


def markdown_table(rows: Sequence[Row], target: float) -> str:
    lines = ["| " + " | ".join(_headers()) + " |", "|" + "---|" * 2 + "---:|" * (1 + len(COLUMNS))]
    for row in rows:
        cells = []
        for column in COLUMNS:
            cell = row.cells[column.key]
            text = cell.text(column.digits)
            text = f"**{text}**" if cell.best else text
            cells.append(text + (f" {TIE}" if cell.tie else ""))
        lines.append("| " + " | ".join([row.strategy, row.setting, str(len(row.seeds)), *cells]) + " |")
    lines.append("")
    lines.append(f"Mean ± std (population) over seeds. Rounds to target: first round whose global test accuracy is ≥ "
                 f"{target:g}; the mean is over the seeds that reached it, {MISSING_NOTE}. **Bold**: best of its setting. "
                 f"{TIE_NOTE}.")
    return "\n".join(lines) + "\n"


def csv_table(rows: Sequence[Row]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    header = ["strategy", "setting", "seeds"]
    for column in COLUMNS:
        header += [f"{column.key}_mean", f"{column.key}_std", f"{column.key}_best", f"{column.key}_tie"]
    header.append("rounds_to_target_not_reached")
    writer.writerow(header)
    for row in rows:
        line: list[object] = [row.strategy, row.setting, " ".join(str(s) for s in row.seeds)]
        for column in COLUMNS:
            cell = row.cells[column.key]
            line += ["" if cell.mean is None else cell.mean, "" if cell.std is None else cell.std, int(cell.best), int(cell.tie)]
        line.append(row.cells["rounds_to_target"].missing)
        writer.writerow(line)
    return buffer.getvalue()


def write_tables(rows: Sequence[Row], out: Path, target: float) -> dict[str, Path]:
    paths = {"md": Path(out) / TABLE_MD, "csv": Path(out) / TABLE_CSV}
    write_atomic(paths["md"], markdown_table(rows, target).encode())
    write_atomic(paths["csv"], csv_table(rows).encode())
    return paths

