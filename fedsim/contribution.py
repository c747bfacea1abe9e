"""Collaboration fairness (FedCE paper, Table 2): does FedCE's weight of a client track what the client is worth?

The reference contribution of client k is leave-one-out: the final accuracy of the full federation minus that of
the same run (same seed, same partition, same everything) with k excluded from every round (`exclude_clients=[k]`).
Accuracy is measured one of two ways (`reference`):
- `clients` (default, the paper's): the mean over every client's held-out split, the left-out client's included,
  as the paper averages the sites' own test sets;
- `test`: the pooled test split of the data set.
FedCE's estimate is k's weight in the last round (the mean over rounds is kept too). The agreement is their
Pearson correlation over clients.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from .recorder import METRICS_FILE, write_atomic

CONTRIBUTION_FILE = "contribution.json"
CONTRIBUTION_PLOT = "contribution.png"
REFERENCES = ("clients", "test")
# Called after every run with (index from 1, total runs, label, final test accuracy, seconds).
RunCallback = Callable[[int, int, str, float, float], None]


def contribution_overrides(overrides: Sequence[str]) -> list[str]:
    """The user's overrides with the strategy forced to FedCE (its own `strategy.*` keys are kept)."""
    return [o for o in overrides if not o.lstrip("+~").startswith("strategy=")] + ["strategy=fedce"]


def fedce_weights(run_dir: Path, num_clients: int) -> tuple[list[float], list[float]]:
    """Per client: the weight of the last round, and the mean weight over the rounds it took part in."""
    with open(Path(run_dir) / METRICS_FILE, newline="") as stream:
        rows = [row for row in csv.DictReader(stream) if int(row["round"]) > 0]
    final, mean = [], []
    for pid in range(num_clients):
        values = [float(row[f"weight_client_{pid}"]) for row in rows if row.get(f"weight_client_{pid}")]
        last = rows[-1].get(f"weight_client_{pid}") if rows else ""
        final.append(float(last) if last else 0.0)
        mean.append(sum(values) / len(values) if values else 0.0)
    return final, mean


def pearson(x: Sequence[float], y: Sequence[float]) -> tuple[float | None, float | None]:
    """Pearson's r and its p-value; None when either side is constant (r is undefined) or there are < 3 clients."""
    from scipy.stats import pearsonr

    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None, None
    result = pearsonr(x, y)
    r, p = float(result.statistic), float(result.pvalue)
    return (None, None) if math.isnan(r) else (r, p)


def reference_accuracy(summary: Mapping[str, Any], reference: str) -> float:
    """The accuracy a leave-one-out difference is taken on (see the module docstring)."""
    if reference == "clients":
        return float(summary["client_accuracy"]["mean"])
    return float(summary["final_accuracy"])


def validate_contribution(experiment: Mapping[str, Any], reference: str = "clients") -> None:
    """Refuse, before any run, a study that cannot be done: the experiment and each of its leave-one-out runs must
    be valid, and leaving one client out needs at least 2."""
    from .config import validate
    from .errors import ConfigError, FedsimError

    if reference not in REFERENCES:
        raise FedsimError(f"--reference {reference}: one of {', '.join(REFERENCES)}")
    validate(experiment)
    if int(experiment["num_clients"]) < 2:
        raise ConfigError("num_clients", experiment["num_clients"], "at least 2: a leave-one-out study leaves one out")
    if experiment.get("exclude_clients"):
        raise ConfigError("exclude_clients", experiment["exclude_clients"],
                          "[] (fedsim contribution sets it for each leave-one-out run)")
    for k in range(int(experiment["num_clients"])):
        validate({**experiment, "exclude_clients": [k]})


def run_contribution(experiment: Mapping[str, Any], out: Path, on_run: RunCallback | None = None,
                     reference: str = "clients") -> dict[str, Any]:
    """The full FedCE run in out/full and one run per left-out client in out/without_<k>; writes and returns the
    report (also `contribution.json` and `contribution.png` in `out`)."""
    from .run import run_experiment

    validate_contribution(experiment, reference)
    out = Path(out)
    num_clients = int(experiment["num_clients"])
    total = num_clients + 1

    def one_run(index: int, label: str, excluded: list[int], folder: str) -> dict[str, Any]:
        started = time.perf_counter()
        summary = run_experiment({**experiment, "exclude_clients": excluded}, out / folder, show_progress=False)
        if on_run is not None:
            on_run(index, total, label, reference_accuracy(summary, reference), time.perf_counter() - started)
        return summary

    full = one_run(1, "full federation", [], "full")
    final_weights, mean_weights = fedce_weights(out / "full", num_clients)
    clients = []
    for k in range(num_clients):
        without = one_run(k + 2, f"without client {k}", [k], f"without_{k}")
        clients.append({
            "client": k,
            "fedce_weight": final_weights[k],
            "fedce_weight_mean": mean_weights[k],
            "accuracy_without": reference_accuracy(without, reference),
            "loo_contribution": reference_accuracy(full, reference) - reference_accuracy(without, reference),
        })
    loo = [c["loo_contribution"] for c in clients]
    r_final, p_final = pearson(final_weights, loo)
    r_mean, p_mean = pearson(mean_weights, loo)
    report = {
        "reference": reference,
        "full_accuracy": reference_accuracy(full, reference),
        "num_rounds": int(experiment["num_rounds"]),
        "seed": int(experiment["seed"]),
        "mode": experiment["strategy"].get("mode", "plus"),
        "clients": clients,
        "pearson": {"final_weight": r_final, "final_weight_p": p_final, "mean_weight": r_mean, "mean_weight_p": p_mean},
    }
    write_atomic(out / CONTRIBUTION_FILE, json.dumps(report, indent=2).encode())
    plot_contribution(clients, out / CONTRIBUTION_PLOT, r_final, reference)
    return report


def plot_contribution(clients: Sequence[Mapping[str, Any]], path: Path, r: float | None,
                      reference: str = "clients") -> None:
    """Two bars per client: FedCE's final weight and the leave-one-out accuracy drop (own axis each)."""
    import numpy as np

    from .plots import plt, save_figure

    ids = np.arange(len(clients))
    figure, axis = plt.subplots(figsize=(max(6.4, 0.6 * len(clients)), 4.0), dpi=120)
    twin = axis.twinx()
    axis.bar(ids - 0.2, [c["fedce_weight"] for c in clients], width=0.4, color="tab:blue",
             label="FedCE weight (final round)")
    twin.bar(ids + 0.2, [c["loo_contribution"] for c in clients], width=0.4, color="tab:orange",
             label="leave-one-out accuracy drop")
    twin.axhline(0, color="grey", linewidth=0.6)
    axis.set_xticks(ids)
    axis.set_xlabel("client (partition id)")
    axis.set_ylabel("FedCE weight", color="tab:blue")
    twin.set_ylabel(f"LOO contribution ({_REFERENCE_NAMES[reference]})", color="tab:orange")
    _align_zeros(axis, twin, [c["fedce_weight"] for c in clients], [c["loo_contribution"] for c in clients])
    handles = axis.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    twin.legend(handles, [h.get_label() for h in handles], loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2,
                fontsize=8)
    save_figure(figure, path, f"FedCE weight vs leave-one-out contribution · Pearson r = {_fmt(r)}")


def _align_zeros(left: Any, right: Any, weights: Sequence[float], drops: Sequence[float]) -> None:
    """Put 0 at the same height on both axes, so a negative LOO bar reads as "below nothing"."""
    low, high = min(0.0, *drops), max(0.0, *drops)
    span = (high - low) or 1.0
    low, high = low - 0.05 * span, high + 0.05 * span
    below = -low / (high - low)  # share of the height under 0
    top = 1.1 * max(max(weights, default=0.0), 1e-9)
    right.set_ylim(low, high)
    left.set_ylim(-below / (1 - below) * top, top)


def contribution_table(report: Mapping[str, Any]) -> Table:
    name = _REFERENCE_NAMES[report.get("reference", "test")]
    table = Table(title=f"FedCE contribution vs leave-one-out (full run: {name} {report['full_accuracy']:.4f})",
                  header_style="bold")
    for name in ("client", "FedCE weight", "mean weight", "accuracy without", "LOO contribution"):
        table.add_column(name, justify="right")
    for c in report["clients"]:
        table.add_row(str(c["client"]), f"{c['fedce_weight']:.4f}", f"{c['fedce_weight_mean']:.4f}",
                      f"{c['accuracy_without']:.4f}", f"{c['loo_contribution']:+.4f}")
    pearson_ = report["pearson"]
    table.caption = (f"Pearson r (final weight, LOO) = {_fmt(pearson_['final_weight'])} "
                     f"(p = {_fmt(pearson_['final_weight_p'])}); "
                     f"mean weight: r = {_fmt(pearson_['mean_weight'])}")
    return table


_REFERENCE_NAMES = {"clients": "mean client accuracy", "test": "test accuracy"}


def _fmt(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"
