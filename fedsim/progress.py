"""What a person watches while a run goes: a progress bar per round, then a summary table.

Results (summary tables, the run folder, reports' paths, help) go to stdout through `output`, so that
`RUN=$(fedsim ...)` or `fedsim ... > results.txt` captures them; progress and diagnostics go to stderr through
`console`. Without a terminal on stderr, a run prints one plain line per round instead of a live bar, as it goes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console(stderr=True)  # progress and diagnostics
output = Console()  # results


_shared: Progress | None = None  # the sweep's live display, while `SweepProgress` runs; round bars join it
_in_sweep = False  # a multi-run command is going: without a terminal, it prints a line per run, not per round


def _bar(*fields: TextColumn, enabled: bool) -> Progress:
    """fedsim's progress bar: description, bar, done/total, the caller's fields, elapsed time and ETA."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), *fields,
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console, disable=not enabled)


class SweepProgress:
    """Runs done / total with ETA for a multi-run command; each run's `RoundProgress` shows as a second bar below it
    (rich allows one live display at a time)."""

    def __init__(self, total: int, description: str = "runs", enabled: bool = True) -> None:
        enabled = enabled and console.is_terminal  # rich draws nothing until the end without a terminal
        self._progress = _bar(TextColumn("{task.fields[info]}"), enabled=enabled)
        self._enabled = enabled
        self._task = self._progress.add_task(description, total=total, info="")

    def __enter__(self) -> SweepProgress:
        global _shared, _in_sweep  # pylint: disable=global-statement
        self._progress.start()
        _shared = self._progress if self._enabled else None
        _in_sweep = True
        return self

    def __exit__(self, *exc: object) -> None:
        global _shared, _in_sweep  # pylint: disable=global-statement
        _shared, _in_sweep = None, False
        self._progress.stop()

    def advance(self, info: str = "") -> None:
        self._progress.update(self._task, advance=1, info=info)


class RoundProgress:
    """Rounds done with the latest global accuracy and loss: a live bar on a terminal, one line per round without
    one (a log file, CI, `2> run.log`), nothing when disabled. Inside a `SweepProgress` it is the sweep's second bar."""

    def __init__(self, num_rounds: int, enabled: bool = True, description: str = "rounds") -> None:
        self.enabled = enabled
        self._shared = _shared if enabled else None
        self._lines = enabled and not _in_sweep and not console.is_terminal
        self._num_rounds = num_rounds
        self._started = time.monotonic()
        if self._shared is not None:
            self._progress = self._shared
            self._task = self._progress.add_task(description, total=num_rounds, info="", accuracy="-", loss="-")
            return
        self._progress = _bar(TextColumn("acc [cyan]{task.fields[accuracy]}"), TextColumn("loss {task.fields[loss]}"),
                              enabled=enabled and console.is_terminal)
        self._task = self._progress.add_task(description, total=num_rounds, accuracy="-", loss="-")

    def __enter__(self) -> RoundProgress:
        if self._shared is None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._shared is None:
            self._progress.stop()
        else:
            self._progress.remove_task(self._task)

    def update(self, server_round: int, accuracy: float, loss: float) -> None:
        if self._lines:
            seconds = time.monotonic() - self._started
            print(f"round {server_round}/{self._num_rounds} acc {accuracy:.4f} loss {loss:.4f} elapsed {seconds:.1f} s",
                  file=sys.stderr, flush=True)
            return
        self._progress.update(self._task, completed=server_round, accuracy=f"{accuracy:.4f}", loss=f"{loss:.4f}",
                              info=f"acc [cyan]{accuracy:.4f}[/] loss {loss:.4f}")


def _fmt(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def summary_table(summary: Mapping[str, Any]) -> Table:
    clients = summary["client_accuracy"]
    table = Table(title="fedsim run summary", show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for group, name in summary["choices"].items():
        table.add_row(group, str(name))
    table.add_row("final test accuracy", _fmt(summary["final_accuracy"]))
    table.add_row("best test accuracy", f"{_fmt(summary['best_accuracy'])} (round {summary['best_round']})")
    table.add_row(f"client accuracy mean ± std (n={clients['clients']})",
                  f"{_fmt(clients['mean'])} ± {_fmt(clients['std'])}")
    table.add_row("client accuracy worst 10% / best 10%", f"{_fmt(clients['worst10'])} / {_fmt(clients['best10'])}")
    if clients.get("jain") is not None:
        table.add_row("client accuracy Jain's index", _fmt(clients["jain"]))
    fairness = summary.get("fairness")
    if fairness:  # data with a sensitive attribute: the final global model's group fairness on the test split
        table.add_row("test SPD (P(Ŷ=1|A=0) − P(Ŷ=1|A=1))", _fmt(fairness.get("test_spd")))
        table.add_row("test EOD (same, given Y=1)", _fmt(fairness.get("test_eod")))
    table.add_row("rounds", str(summary["rounds_completed"]))
    if summary.get("bytes_total") is not None:  # bytes on the wire (fedsim.grid.traffic)
        table.add_row("traffic to / from clients", f"{_megabytes(summary['bytes_down'])} / "
                                                   f"{_megabytes(summary['bytes_up'])}")
    table.add_row("wall time", f"{summary['wall_seconds']:.1f} s")
    return table


def _megabytes(count: float) -> str:
    return f"{count / 1e6:.3g} MB" if count >= 1e5 else f"{count / 1e3:.3g} kB"


def partition_table(report: Mapping[str, Any], max_rows: int = 30) -> Table:
    """Per-client heterogeneity (first `max_rows` clients) and the summary over all clients; over labels, and over
    embedding clusters when the partition has them."""
    parts = [("labels", report["labels"])] + ([("clusters", report["clusters"])] if "clusters" in report else [])
    caption = ("labels, clusters: how many the client holds · H: entropy (nats) · JS: Jensen-Shannon divergence "
               "(base 2) to the global mix · EMD: sum |p - global|" + (" · left over labels, right over embedding "
                                                                        "clusters" if len(parts) > 1 else ""))
    table = Table(title=f"partition heterogeneity ({report['num_clients']} clients)", header_style="bold",
                  caption=caption, box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1), pad_edge=False,
                  collapse_padding=True)
    table.add_column("client", justify="right", no_wrap=True, min_width=6)
    table.add_column("size", justify="right", no_wrap=True, min_width=4)
    for name, _ in parts:
        for column in (name, "H", "JS", "EMD"):
            table.add_column(column, justify="right", no_wrap=True, min_width=len(column))

    def cells(row: Mapping[str, float], integer_classes: bool = True) -> list[str]:
        classes = str(row["classes"]) if integer_classes else f"{row['classes']:.1f}"
        return [classes, f"{row['entropy']:.3f}", f"{row['js_divergence']:.3f}", f"{row['emd']:.3f}"]

    for client in range(min(report["num_clients"], max_rows)):
        row = [str(client), str(report["labels"]["clients"][client]["size"])]
        for _, part in parts:
            row += cells(part["clients"][client])
        table.add_row(*row)
    if report["num_clients"] > max_rows:
        table.add_row(*(["…"] + [""] * (1 + 4 * len(parts))))
    for stat in ("mean", "min", "max"):
        row = [stat, f"{report['labels']['summary']['size'][stat]:.0f}"]
        for _, part in parts:
            row += cells({key: values[stat] for key, values in part["summary"].items()}, integer_classes=False)
        table.add_row(*row, style="bold")
    return table
