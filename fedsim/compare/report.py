"""`report.html`: one self-contained file (images as base64 data URIs) with the table, the plots, the exact command
and the composed configs, so it can be mailed or archived without its folder."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..results import write_atomic
from .table import COLUMNS, MISSING_NOTE, TIE, TIE_NOTE, Row

REPORT_FILE = "report.html"

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1300px; color: #222; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.best { font-weight: bold; background: #e6f4e6; }
tr.first td { border-top: 2px solid #888; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 12px; }
.note { color: #555; font-size: 13px; }
figure { margin: 1em 0; } figcaption { font-size: 13px; color: #444; }
"""


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _table(rows: Sequence[Row]) -> str:
    headers = ["strategy", "setting", "seeds"] + [column.title for column in COLUMNS]
    lines = ["<table>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr>"]
    previous = None
    for row in rows:
        first = previous is not None and row.setting != previous
        previous = row.setting
        cells = [f"<td>{html.escape(row.strategy)}</td>", f"<td>{html.escape(row.setting)}</td>",
                 f"<td class=\"num\">{len(row.seeds)}</td>"]
        for column in COLUMNS:
            cell = row.cells[column.key]
            text = html.escape(cell.text(column.digits) + (f" {TIE}" if cell.tie else ""))
            cells.append(f"<td class=\"num{' best' if cell.best else ''}\">{text}</td>")
        opening = '<tr class="first">' if first else "<tr>"
        lines.append(opening + "".join(cells) + "</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _figure(path: Path, caption: str) -> str:
    return (f"<figure><img src=\"{data_uri(path)}\" alt=\"{html.escape(caption)}\">"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def write_report(
    out: Path,
    command: str,
    rows: Sequence[Row],
    target: float,
    plots: Sequence[tuple[Path, str]],
    partitions: Mapping[str, Path],
    configs: Mapping[str, str],
    notes: Sequence[str] = (),
) -> Path:
    """Write `out/report.html`; `plots` are (PNG, caption), `partitions` setting label -> heatmap PNG, `configs`
    title -> composed config as YAML."""
    parts = [
        "<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<title>fedsim strategy comparison</title>", f"<style>{STYLE}</style></head><body>",
        "<h1>fedsim strategy comparison</h1>",
        "<h2>Command</h2>", f"<pre>{html.escape(command)}</pre>",
    ]
    parts += [f"<p class=\"note\">{html.escape(note)}</p>" for note in notes]
    parts += [
        "<h2>Comparison</h2>", _table(rows),
        f"<p class=\"note\">Mean ± population std over seeds. Rounds to target: first round whose global test accuracy "
        f"is ≥ {target:g}, averaged over the seeds that reached it; {html.escape(MISSING_NOTE)}. Bold: best of its setting. {html.escape(TIE_NOTE)}. "
        "Worst-10% and std of client accuracy: the final model on every client's validation split.</p>",
        "<h2>Plots</h2>",
    ]
    parts += [_figure(path, caption) for path, caption in plots]
    if partitions:
        parts.append("<h2>Partitions</h2>")
        parts += [_figure(path, f"label counts per client · {setting}") for setting, path in partitions.items()]
    parts.append("<h2>Composed configs</h2>")
    for title, text in configs.items():
        parts.append(f"<details><summary>{html.escape(title)}</summary><pre>{html.escape(text)}</pre></details>")
    parts.append("</body></html>")
    path = Path(out) / REPORT_FILE
    write_atomic(path, "\n".join(parts).encode())
    return path
