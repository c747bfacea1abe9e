"""`report.html`: one self-contained file (images as base64 data URIs) that states what a paper's results table
states: the setup, each strategy's hyper-parameters and client optimiser, the table with what its uncertainty is,
the plots, the exact command and the composed configs. It can be mailed or archived without its folder."""

from __future__ import annotations

import base64
import html
import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..recorder import write_atomic
from .plots import TIME_PLOT, TRAFFIC_PLOT
from .setup import StrategySetup
from .table import TIE, WARNING, Row, headers, legend, optimizer_warning, table_cells, visible_columns

REPORT_FILE = "report.html"
# plots of one question (what it costs to reach an accuracy, in seconds and in bytes), shown side by side when the page
# is wide enough for both
SIDE_BY_SIDE = frozenset({TIME_PLOT, TRAFFIC_PLOT})

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1340px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; font-size: 13px; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
span.nb { white-space: nowrap; }
td.best { font-weight: bold; background: #c8ebc8; }
td.best.tie { background: #eef7ee; }
tr.setting th { text-align: left; background: #e4e8f0; }
td.warn { background: #fff1c7; }
.warning { background: #fff1c7; border: 1px solid #e0b400; padding: 0.6em 1em; font-weight: bold; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 12px; }
.note, ul.legend { color: #444; font-size: 13px; }
figure { margin: 1em 0; } figcaption { font-size: 13px; color: #444; }
div.side { display: flex; flex-wrap: wrap; gap: 1em; } div.side figure { flex: 1 1 560px; min-width: 0; }
"""


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _comparison(rows: Sequence[Row]) -> str:
    """The results table, one header row per setting; best cells are green (pale when `≈`)."""
    columns = visible_columns(rows, compact=True)
    titles = ["strategy", "seeds", *headers(rows, columns), "client optimiser"]
    lines = ['<table id="comparison">', "<tr>" + "".join(f"<th>{html.escape(t)}</th>" for t in titles) + "</tr>"]
    previous = None
    for row in rows:
        if row.setting != previous:
            lines.append(f'<tr class="setting"><th colspan="{len(titles)}">{html.escape(row.setting)}</th></tr>')
            previous = row.setting
        cells = [f"<td>{html.escape(row.strategy)}</td>", f'<td class="num">{len(row.seeds)}</td>']
        for text, best in table_cells(row, columns):
            classes = "num" + (" best" if best else "") + (" tie" if best and text.endswith(TIE) else "")
            cells.append(f'<td class="{classes}">{_number(text)}</td>')
        optimizer = (f"{WARNING} " if row.optimizer_differs else "") + (row.optimizer or "—")
        cells.append(f'<td class="{"warn" if row.optimizer_differs else ""}">{html.escape(optimizer)}</td>')
        lines.append("<tr>" + "".join(cells) + "</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _number(text: str) -> str:
    """`0.838 ± 0.051 ≈` as two unbreakable halves, so a wide table wraps at the ± instead of running off the page."""
    mean, sep, rest = text.partition(" ± ")
    if not sep:
        return f'<span class="nb">{html.escape(text)}</span>'
    return f'<span class="nb">{html.escape(mean)}</span> <span class="nb">± {html.escape(rest)}</span>'


def _setup(setup: Sequence[tuple[str, str]]) -> str:
    lines = ['<table id="setup">']
    lines += [f"<tr><th>{html.escape(item)}</th><td>{html.escape(value)}</td></tr>" for item, value in setup]
    lines.append("</table>")
    return "\n".join(lines)


def _strategies(strategies: Sequence[StrategySetup]) -> str:
    differ = len({tuple(s.optimizers) for s in strategies}) > 1
    lines = ['<table id="strategies">', "<tr><th>strategy</th><th>class</th><th>hyper-parameters</th>"
             "<th>client optimiser</th><th>optimiser chosen by</th></tr>"]
    for s in strategies:
        optimizer = (f"{WARNING} " if differ else "") + " | ".join(s.optimizers)
        lines.append(
            f"<tr><td>{html.escape(s.strategy)}</td><td>{html.escape(s.target)}</td>"
            f"<td>{'<br>'.join(html.escape(h) for h in s.hyperparameters)}</td>"
            f'<td class="{"warn" if differ else ""}">{html.escape(optimizer)}</td>'
            f"<td>{html.escape(' | '.join(s.sources) or '—')}</td></tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _figure(path: Path, caption: str) -> str:
    return (f"<figure><img src=\"{data_uri(path)}\" alt=\"{html.escape(caption)}\">"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _figures(plots: Sequence[tuple[Path, str]]) -> list[str]:
    """Every plot as a figure; consecutive plots of `SIDE_BY_SIDE` share one row (they wrap on a narrow page)."""
    parts = []
    for side, group in itertools.groupby(plots, key=lambda plot: Path(plot[0]).name in SIDE_BY_SIDE):
        figures = "\n".join(_figure(path, caption) for path, caption in group)
        parts.append(f'<div class="side">{figures}</div>' if side else figures)
    return parts


def write_report(
    out: Path,
    command: str,
    rows: Sequence[Row],
    target: float,
    plots: Sequence[tuple[Path, str]],
    partitions: Mapping[str, Path],
    configs: Mapping[str, str],
    notes: Sequence[str] = (),
    setup: Sequence[tuple[str, str]] = (),
    strategies: Sequence[StrategySetup] = (),
) -> Path:
    """Write `out/report.html`; `plots` are (PNG, caption), `partitions` setting label -> heatmap PNG, `configs`
    title -> composed config as YAML, `setup` (item, value) of the grid, `strategies` their hyper-parameters."""
    parts = [
        "<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<title>fedsim strategy comparison</title>", f"<style>{STYLE}</style></head><body>",
        "<h1>fedsim strategy comparison</h1>",
    ]
    warning = optimizer_warning(rows)
    if warning:
        parts.append(f'<p class="warning" id="optimizer-warning">{html.escape(warning)}</p>')
    parts += [f"<p class=\"note\">{html.escape(note)}</p>" for note in notes]
    if setup:
        parts += ["<h2>Setup</h2>", _setup(setup)]
    if strategies:
        parts += ["<h2>Strategies</h2>", _strategies(strategies)]
    parts += ["<h2>Results</h2>", _comparison(rows), '<ul class="legend">']
    parts += [f"<li>{html.escape(note)}</li>" for note in legend(rows, target, compact=True)]
    parts.append("<li>comparison.md and comparison.csv beside this report also give the best accuracy of any round "
                 "and the std of client accuracy; the csv gives stds, interval half-widths and n per cell.</li>")
    parts += ["</ul>", "<h2>Plots</h2>"]
    parts += _figures(plots)
    if partitions:
        parts.append("<h2>Partitions</h2>")
        parts += [_figure(path, f"label counts per client · {setting}") for setting, path in partitions.items()]
    parts += ["<h2>Command</h2>", f"<pre>{html.escape(command)}</pre>", "<h2>Composed configs</h2>"]
    for title, text in configs.items():
        parts.append(f"<details><summary>{html.escape(title)}</summary><pre>{html.escape(text)}</pre></details>")
    parts.append("</body></html>")
    path = Path(out) / REPORT_FILE
    write_atomic(path, "\n".join(parts).encode())
    return path
