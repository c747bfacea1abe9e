"""The recorder: the only writer of a run folder.

A run folder holds `config.yaml` (the resolved experiment), `metrics.csv` (one row per round), `summary.json`,
`accuracy.png`, and `rejections.csv` / `nodes.csv` (refused replies, nodes seen). Every file is written to a
temporary name and renamed, so a crash never leaves a torn file.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from .protocol.keys import EVAL_ACCURACY, NUM_EXAMPLES, TRAIN_LOSS

if TYPE_CHECKING:
    from .grid.round_log import NodeRecord, Rejection

METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.yaml"
PLOT_FILE = "accuracy.png"
MODEL_FILE = "model.pt"
# one line per client reply the server refused (round, partition, node, kind, reason)
REJECTIONS_FILE = "rejections.csv"
# one line per node the server saw (node id, claimed partition, accepted/refused, reason, round)
NODES_FILE = "nodes.csv"
NODE_COLUMNS = ["node_id", "partition", "status", "reason", "round"]

ROUND_COLUMNS = [
    "round",
    "test_accuracy",
    "test_loss",
    "train_loss",
    "train_clients",
    "sampled",
    "eval_clients",
    "failures",
    "rejected",
    "skipped",
    "client_acc_mean",
    "client_acc_std",
    "client_acc_worst10",
    "client_acc_best10",
    "client_acc_jain",
    "round_seconds",
    "wall_seconds",
    "sim_time",
    "bytes_down",
    "bytes_up",
    "total_bytes_down",
    "total_bytes_up",
]
# The only columns in which two runs of one experiment differ (a resumed run, another engine, a re-run).
TIMING_COLUMNS = ("round_seconds", "wall_seconds")
# Bytes on the wire (`fedsim.grid.traffic`): the same on every re-run of one engine, but another engine's node ids
# and message metadata serialise to a few bytes more or less, and a resumed run discovers its nodes again.
TRAFFIC_COLUMNS = ("bytes_down", "bytes_up", "total_bytes_down", "total_bytes_up")


@dataclass(frozen=True)
class RoundRecord:
    """One round as the server saw it: the global model's test accuracy and loss, the clients' reply metrics by
    partition id, the failed, rejected and skipped replies (`fedsim.grid.round_log`), the strategy's aggregation
    weights by partition id and named scalars, and the nodes seen since the last round."""

    server_round: int  # 0: the initial model, before any training
    test_accuracy: float
    test_loss: float
    train: Mapping[int, Mapping[str, float]] = field(default_factory=dict)
    evaluate: Mapping[int, Mapping[str, float]] = field(default_factory=dict)
    failures: int = 0
    weights: Mapping[int, float] = field(default_factory=dict)
    scalars: Mapping[str, float] = field(default_factory=dict)
    rejections: Sequence[Rejection] = ()
    skipped: bool = False  # too few valid training replies: nothing was aggregated
    nodes: Sequence[NodeRecord] = ()
    sim_time: float = 0.0  # simulated seconds since the run began, at the end of this round (`fedsim.clock`)
    bytes_down: int = 0  # bytes sent to clients since the last row, as Flower serialises them (`fedsim.grid.traffic`)
    bytes_up: int = 0  # bytes received from clients since the last row


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and an atomic rename.

    The file gets the permissions any new file would (0666 less the umask), not mkstemp's private 0600: run
    folders and reports are meant to be shared.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(handle, 0o666 & ~_current_umask())
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def tail_mean(values: Sequence[float], share: float, lowest: bool) -> float:
    """Mean of the lowest (or highest) `share` of the values, at least one value: "worst-10%" / "best-10%"."""
    ordered = sorted(values, reverse=not lowest)
    count = max(1, math.ceil(share * len(ordered)))
    return float(np.mean(ordered[:count]))


def jain_index(values: Sequence[float]) -> float:
    """Jain's fairness index (sum x)^2 / (n sum x^2): 1 when every client is equal, 1/n when one has everything."""
    array = np.asarray(values, dtype=np.float64)
    squares = float((array**2).sum())
    return float(array.sum() ** 2 / (len(array) * squares)) if squares > 0 else 1.0


def client_accuracy_stats(accuracies: Sequence[float]) -> dict[str, float | None]:
    """Performance fairness over clients: mean, std, worst-10%, best-10% (q-FFL's statistics) and Jain's index."""
    if not accuracies:
        return {"mean": None, "std": None, "worst10": None, "best10": None, "jain": None}
    return {
        "mean": float(np.mean(accuracies)),
        "std": float(np.std(accuracies)),
        "worst10": tail_mean(accuracies, 0.1, lowest=True),
        "best10": tail_mean(accuracies, 0.1, lowest=False),
        "jain": jain_index(accuracies),
    }


def weighted_mean(per_client: Mapping[int, Mapping[str, float]], key: str) -> float | None:
    pairs = [(m[key], m.get(NUM_EXAMPLES, 1.0)) for m in per_client.values() if key in m]
    total = sum(weight for _, weight in pairs)
    return sum(value * weight for value, weight in pairs) / total if total > 0 else None


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("fedsim", "flwr", "flwr-datasets", "torch", "numpy"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


class Recorder:
    """Collects one row per round and writes the run folder as it goes."""

    def __init__(self, run_dir: Path, experiment: Mapping[str, Any], num_clients: int,
                 choices: Mapping[str, str]) -> None:
        self.run_dir = Path(run_dir)
        self.experiment = experiment
        self.num_clients = num_clients
        self.choices = dict(choices)
        self.rows: list[dict[str, Any]] = []
        self._scalar_columns: list[str] = []  # strategy scalars (e.g. gamma, stragglers), in order of appearance
        self._has_weights = False
        self._rejections: list[tuple[int, int, int, str, str]] = []
        self._nodes: list[tuple[int, int | str, str, str, int]] = []  # NODE_COLUMNS; partition "" when none claimed
        self.started = time.perf_counter()
        self._last_round_end = self.started
        write_atomic(self.run_dir / CONFIG_FILE, yaml.safe_dump(dict(experiment), sort_keys=False).encode())
        # light: the chosen tracker's library loads with the first row
        from .tracking import open_tracker

        self.tracker = open_tracker(self.run_dir, experiment, self.choices)

    def state(self) -> dict[str, Any]:
        """What a checkpoint needs to carry the run folder on after a restart."""
        return {"rows": list(self.rows), "scalar_columns": list(self._scalar_columns), "has_weights": self._has_weights,
                "rejections": list(self._rejections), "nodes": list(self._nodes),
                "elapsed": time.perf_counter() - self.started}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's `state()`: its rows stay, wall time goes on from where it stopped."""
        self.rows = list(state["rows"])
        self._scalar_columns = list(state["scalar_columns"])
        self._has_weights = bool(state["has_weights"])
        self._rejections = list(state["rejections"])
        self._nodes = list(state.get("nodes", []))  # checkpoints from before nodes.csv have none
        self.started = time.perf_counter() - float(state["elapsed"])
        self._last_round_end = time.perf_counter()

    @property
    def columns(self) -> list[str]:
        clients = [f"acc_client_{pid}" for pid in range(self.num_clients)]
        weights = [f"weight_client_{pid}" for pid in range(self.num_clients)] if self._has_weights else []
        return ROUND_COLUMNS + self._scalar_columns + clients + weights

    def record_round(self, record: RoundRecord) -> dict[str, Any]:
        """Add and write the row of `record.server_round`, its rejections (`rejections.csv`) and its nodes
        (`nodes.csv`, see `record_nodes`); returns the row."""
        now = time.perf_counter()
        row = self._row(record, now)
        self._has_weights = self._has_weights or bool(record.weights)
        self._scalar_columns += [name for name in record.scalars if name not in self._scalar_columns]
        self._last_round_end = now
        self.rows.append(row)
        self._write_metrics()
        tracking_started = time.perf_counter()
        self.tracker.log_round(row)
        # a tracker's time (opening one: seconds) is no round's
        self._last_round_end += time.perf_counter() - tracking_started
        if record.rejections:
            self._rejections.extend((record.server_round, r.partition, r.node_id, r.kind, r.reason)
                                    for r in record.rejections)
            self._write_rejections()
        self.record_nodes(record.nodes, record.server_round)
        return row

    def _row(self, record: RoundRecord, now: float) -> dict[str, Any]:
        accuracies = {pid: m[EVAL_ACCURACY] for pid, m in record.evaluate.items() if EVAL_ACCURACY in m}
        stats = client_accuracy_stats(list(accuracies.values()))
        return {
            "round": record.server_round,
            "test_accuracy": record.test_accuracy,
            "test_loss": record.test_loss,
            "train_loss": weighted_mean(record.train, TRAIN_LOSS),
            "train_clients": len(record.train),
            "sampled": " ".join(str(pid) for pid in sorted(record.train)),
            "eval_clients": len(accuracies),
            "failures": record.failures,
            "rejected": len(record.rejections),
            "skipped": int(record.skipped),
            **{f"client_acc_{name}": stats[name] for name in ("mean", "std", "worst10", "best10", "jain")},
            "round_seconds": now - self._last_round_end,
            "wall_seconds": now - self.started,
            "sim_time": record.sim_time,
            "bytes_down": record.bytes_down,
            "bytes_up": record.bytes_up,
            "total_bytes_down": self.total_bytes("down") + record.bytes_down,
            "total_bytes_up": self.total_bytes("up") + record.bytes_up,
            **{f"acc_client_{pid}": accuracy for pid, accuracy in accuracies.items()},
            **{f"weight_client_{pid}": weight for pid, weight in record.weights.items()},
            **record.scalars,
        }

    def total_bytes(self, direction: str) -> int:
        """Bytes moved `direction` ("down": to clients, "up": from them) up to the last row (0 before any row, or
        in a row written before fedsim counted bytes)."""
        return int(self.rows[-1].get(f"total_bytes_{direction}") or 0) if self.rows else 0

    def record_nodes(self, nodes: Sequence[NodeRecord], server_round: int) -> None:
        """Add the nodes seen at `server_round` (0: node discovery) to `nodes.csv`, one row per node id: a node
        already there (a resumed run discovers its nodes again) keeps its first row."""
        known = {row[0] for row in self._nodes}
        fresh = [node for node in nodes if node.node_id not in known]
        if not fresh:
            return
        self._nodes.extend((node.node_id, "" if node.partition is None else node.partition, node.status, node.reason,
                            server_round) for node in fresh)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(NODE_COLUMNS)
        writer.writerows(self._nodes)
        write_atomic(self.run_dir / NODES_FILE, buffer.getvalue().encode())

    def _write_metrics(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, restval="")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
        write_atomic(self.run_dir / METRICS_FILE, buffer.getvalue().encode())

    def _write_rejections(self) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["round", "partition", "node_id", "kind", "reason"])
        writer.writerows(self._rejections)
        write_atomic(self.run_dir / REJECTIONS_FILE, buffer.getvalue().encode())

    def save_model(self, state_dict: Mapping[str, Any], input_shape: Sequence[int], num_classes: int,
                   name: str = MODEL_FILE) -> None:
        """A final model as a torch state dict, with what is needed to rebuild it under `__fedsim__`: the global
        model in `model.pt`, a client's own (FedCollab's coalition model) in `models/client_<i>.pt`."""
        import torch

        buffer = io.BytesIO()
        meta = {"input_shape": list(input_shape), "num_classes": int(num_classes)}
        torch.save({**dict(state_dict), "__fedsim__": meta}, buffer)
        (self.run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.run_dir / name, buffer.getvalue())

    def finish(self, final_client_accuracy: Mapping[int, float],
               extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Write `summary.json` and `accuracy.png`; return the summary."""
        trained = [row for row in self.rows if row["round"] > 0] or self.rows
        best = max(trained, key=lambda row: row["test_accuracy"])
        stats = client_accuracy_stats(list(final_client_accuracy.values()))
        summary = {
            "final_accuracy": self.rows[-1]["test_accuracy"],
            "final_loss": self.rows[-1]["test_loss"],
            "best_accuracy": best["test_accuracy"],
            "best_round": best["round"],
            "rounds_completed": self.rows[-1]["round"],
            "client_accuracy": {**stats, "clients": len(final_client_accuracy)},
            "final_client_accuracy": {str(pid): float(acc) for pid, acc in sorted(final_client_accuracy.items())},
            "wall_seconds": time.perf_counter() - self.started,
            "seed": self.experiment.get("seed"),
            "choices": self.choices,
            "versions": package_versions(),
            "complete": True,
            **(extra or {}),
        }
        write_atomic(self.run_dir / SUMMARY_FILE, json.dumps(summary, indent=2).encode())
        from .plots import plot_accuracy  # matplotlib only when a run ends

        plot_accuracy(self.rows, self.run_dir / PLOT_FILE, title=self._title())
        self.tracker.close()
        return summary

    def _title(self) -> str:
        return " · ".join(f"{group}={name}" for group, name in self.choices.items()
                          if group != "engine" and (group, name) != ("compression", "none"))
