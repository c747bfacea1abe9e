"""The accuracy–fairness trade-off of a federation (AGLFOP; Hamman & Dutta, ICLR 2024): the best accuracy that any
classifier can reach on the clients' rows when its global disparity I(Z;Ŷ) and its local disparity I(Z;Ŷ|S) are each
held under a budget (bits), over a grid of budgets; and where real runs sit against that bound.

The program needs only the data. For client k and group z the rows fix N_kz (rows) and μ_kz (rows with Y = 1); a
classifier is summarised by its true and false positives per cell, TP_kz ∈ [0, μ_kz] and FP_kz ∈ [0, N_kz − μ_kz]
(shares of all N rows). They fix the joint P(S=k, Z=z, Ŷ=1) = TP_kz + FP_kz and the error Σ (μ_kz − TP_kz) + FP_kz.
For fixed P(S, Z) both disparities are relative entropies of quantities linear in the variables, so the program is
convex; it is solved exactly as an exponential-cone program (cvxpy), where the reference runs SLSQP from one random
start and hard-codes two clients. A zero budget is written as the linear independence it means (equal positive rates
across groups, in every client for the local budget, pooled for the global one), so the grid's edge needs no cone at
its boundary. Any number of clients; Z, Y and Ŷ binary.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .disparity import disparity, entropy_bits, global_and_local_bits
from .errors import ConfigError, FedsimError

BOUNDS_CSV = "bounds.csv"
BOUNDS_JSON = "bounds.json"
BOUNDS_PLOT = "bounds.png"
ROW_CHOICES = ("all", "validation")  # which of each client's rows the program is written for
LN2 = math.log(2)
FLAT_AXIS_BITS = 0.01  # the span of a budget axis that cannot bind at all, so that it still draws


# --- the data --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CellCounts:
    """Per client k and sensitive group z: rows N[k, z] and rows with Y = 1, μ[k, z]; what the program is given."""

    rows: np.ndarray  # (K, 2) integers
    positives: np.ndarray  # (K, 2) integers, ≤ rows

    def __post_init__(self) -> None:
        rows, positives = np.asarray(self.rows, dtype=np.int64), np.asarray(self.positives, dtype=np.int64)
        if rows.ndim != 2 or rows.shape[1] != 2 or rows.shape != positives.shape:
            raise ValueError(f"counts must be (clients, 2) arrays, got {rows.shape} and {positives.shape}")
        if (positives < 0).any() or (positives > rows).any() or rows.sum() == 0:
            raise ValueError("counts need 0 ≤ positives ≤ rows and at least one row")
        object.__setattr__(self, "rows", rows)
        object.__setattr__(self, "positives", positives)

    @classmethod
    def from_labels(cls, clients: Iterable[tuple[np.ndarray, np.ndarray]]) -> CellCounts:
        """From each client's (labels Y, sensitive attribute Z) arrays, both 0/1."""
        rows, positives = [], []
        for labels, sensitive in clients:
            labels, sensitive = np.asarray(labels, dtype=np.int64), np.asarray(sensitive, dtype=np.int64)
            rows.append(np.bincount(sensitive, minlength=2)[:2])
            positives.append(np.bincount(sensitive, weights=labels == 1, minlength=2)[:2].astype(np.int64))
        return cls(np.array(rows), np.array(positives))

    @property
    def num_clients(self) -> int:
        return int(self.rows.shape[0])

    def label_joint(self) -> np.ndarray:
        """P(S, Z, Y) as a (K, 2, 2) array: the joint of the perfect classifier Ŷ = Y."""
        joint = np.stack([self.rows - self.positives, self.positives], axis=-1).astype(float)
        return joint / joint.sum()

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows.tolist(), "positives": self.positives.tolist()}


def disparities(joint: np.ndarray) -> tuple[float, float]:
    """(I(Z;Ŷ), I(Z;Ŷ|S)) in bits of a joint P(S, Z, Ŷ) given as a (K, 2, 2) array (normalised, and a solver's
    slightly negative cells clipped to 0, here)."""
    return global_and_local_bits(np.clip(np.asarray(joint, dtype=float), 0, None))


def group_entropies(counts: CellCounts) -> dict[str, float]:
    """H(Z), H(Z|S) and I(Z;S) in bits: the most global and local disparity can be, and the gap between them."""
    joint = counts.rows / counts.rows.sum()
    h_z = entropy_bits(joint.sum(0))
    h_z_s = entropy_bits(joint) - entropy_bits(joint.sum(1))
    return {"H_Z": h_z, "H_Z_given_S": max(h_z_s, 0.0), "I_Z_S": max(h_z - h_z_s, 0.0)}


def federation_counts(experiment: Mapping[str, Any], rows: str = "all") -> CellCounts:
    """The (Z, Y) counts of every client of the experiment's federation: all the rows it holds (`all`: training and
    validation, the training rows with their configured label noise) or its validation rows only (`validation`, the
    rows a run's final audit is computed on). Refuses a data set without a sensitive attribute or with Y not binary."""
    from .build import locate
    from .data.client_data import client_data
    from .data.federation import federation_for

    if rows not in ROW_CHOICES:
        raise FedsimError(f"--rows {rows}: one of {', '.join(ROW_CHOICES)}")
    dataset = experiment["dataset"]
    if not locate(str(dataset["_target_"])).has_sensitive_attribute:
        from .config import sensitive_datasets

        raise ConfigError("dataset", dataset.get("name"), "fedsim fairness-bounds needs a sensitive attribute: one of "
                          + ", ".join(sensitive_datasets()))
    federation = federation_for(experiment)
    if federation.data.num_classes != 2:
        raise ConfigError("dataset", dataset.get("name"), "fedsim fairness-bounds needs a binary label")
    clients = []
    for pid in range(federation.num_clients):
        train, validation = client_data(federation, experiment, pid)
        parts = [validation] if rows == "validation" else [train, validation]
        if any(part.sensitive is None for part in parts):
            raise ConfigError("dataset", dataset.get("name"), "rows with a sensitive attribute")
        clients.append((np.concatenate([part.y.numpy() for part in parts]),
                        np.concatenate([part.sensitive.numpy() for part in parts])))  # type: ignore[union-attr]
    return CellCounts.from_labels(clients)


# --- the program -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Bound:
    """The best classifier under one pair of budgets: its accuracy and its joint P(S, Z, Ŷ) (K, 2, 2)."""

    eps_global: float
    eps_local: float
    accuracy: float
    joint: np.ndarray = field(repr=False)
    status: str = "optimal"

    @property
    def achieved(self) -> tuple[float, float]:
        """The solution's own (global, local) disparity in bits, at most the budgets up to solver tolerance."""
        return disparities(self.joint)


class TradeOff:
    """AGLFOP for one federation's counts: `solve(eps_global, eps_local)` gives the best accuracy under
    I(Z;Ŷ) ≤ eps_global and I(Z;Ŷ|S) ≤ eps_local (bits). The cvxpy problems are built once per kind of budget (zero
    or positive, per constraint) with the budgets as parameters, so a grid re-solves without re-compiling."""

    def __init__(self, counts: CellCounts, solver: str = "CLARABEL") -> None:
        import cvxpy as cp  # noqa: F401  (a missing install fails here, not mid-grid)

        self.counts = counts
        self.solver = solver
        total = counts.rows.sum()
        self._n = counts.rows / total  # P(S=k, Z=z)
        self._mu = counts.positives / total  # P(S=k, Z=z, Y=1)
        self._problems: dict[tuple[bool, bool], tuple[Any, ...]] = {}

    def solve(self, eps_global: float, eps_local: float) -> Bound:
        if eps_global < 0 or eps_local < 0:
            raise ValueError("budgets are bits ≥ 0")
        key = (eps_global == 0, eps_local == 0)
        if key not in self._problems:
            self._problems[key] = self._build(*key)
        problem, tp, fp, budget_global, budget_local = self._problems[key]
        budget_global.value, budget_local.value = float(eps_global) * LN2, float(eps_local) * LN2
        status = self._run(problem)
        tp_value = np.clip(np.asarray(tp.value, dtype=float), 0, self._mu)
        fp_value = np.clip(np.asarray(fp.value, dtype=float), 0, self._n - self._mu)
        predicted_positive = tp_value + fp_value
        joint = np.stack([self._n - predicted_positive, predicted_positive], axis=-1)
        error = float((self._mu - tp_value).sum() + fp_value.sum())
        return Bound(float(eps_global), float(eps_local), 1.0 - error, joint, status)

    def _run(self, problem: Any) -> str:
        """Solve with the chosen solver, falling back to SCS if it fails numerically; the status reached."""
        import cvxpy as cp

        for solver in dict.fromkeys((self.solver, "SCS")):
            try:
                problem.solve(solver=solver)
            except cp.error.SolverError:
                continue
            if problem.status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
                return str(problem.status)
        raise FedsimError(f"the trade-off program could not be solved (status {problem.status})")

    def _build(self, zero_global: bool, zero_local: bool) -> tuple[Any, ...]:
        import cvxpy as cp

        n, mu = self._n, self._mu
        tp = cp.Variable(n.shape, nonneg=True)
        fp = cp.Variable(n.shape, nonneg=True)
        budget_global = cp.Parameter(nonneg=True)
        budget_local = cp.Parameter(nonneg=True)
        positive = tp + fp  # P(S=k, Z=z, Ŷ=1)
        by_prediction = (n - positive, positive)  # P(S=k, Z=z, Ŷ=ŷ) for ŷ = 0, 1
        constraints = [tp <= mu, fp <= n - mu]
        both_groups = np.flatnonzero((n > 0).all(axis=1))  # clients holding rows of both groups
        if zero_local:  # Z ⊥ Ŷ in each client: equal positive rates across its groups
            constraints += [positive[k, 0] * n[k, 1] == positive[k, 1] * n[k, 0] for k in both_groups]
        else:  # I(Z;Ŷ|S) = Σ q(k,z,ŷ) ln(q(k,z,ŷ) / (P(z|k) q(k,ŷ))), in nats
            held_rows = n.sum(axis=1, keepdims=True)
            z_given_k = np.divide(n, held_rows, out=np.zeros_like(n), where=held_rows > 0)
            terms = []
            for q in by_prediction:
                per_client = cp.sum(q, axis=1)
                for z in (0, 1):
                    held = np.flatnonzero(n[:, z] > 0)
                    terms.append(cp.sum(cp.rel_entr(q[held, z], cp.multiply(z_given_k[held, z], per_client[held]))))
            constraints.append(cp.sum(cp.hstack(terms)) <= budget_local)
        groups = n.sum(axis=0)  # P(Z=z)
        if (groups > 0).all():  # with one group in the data, Z is constant and both disparities are 0
            if zero_global:  # Z ⊥ Ŷ over the federation: equal pooled positive rates
                constraints.append(cp.sum(positive[:, 0]) * groups[1] == cp.sum(positive[:, 1]) * groups[0])
            else:  # I(Z;Ŷ) = Σ q(z,ŷ) ln(q(z,ŷ) / (P(z) q(ŷ)))
                terms = []
                for q in by_prediction:
                    pooled = cp.sum(q, axis=0)
                    terms += [cp.rel_entr(pooled[z], groups[z] * cp.sum(q)) for z in (0, 1)]
                constraints.append(cp.sum(cp.hstack(terms)) <= budget_global)
        error = cp.sum(mu - tp) + cp.sum(fp)
        problem = cp.Problem(cp.Minimize(error), constraints)
        return problem, tp, fp, budget_global, budget_local


def budget_axes(counts: CellCounts, size: int = 10, max_bits: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The grid's global and local budgets: `size` values each from 0 to the loosest budget that can bind, H(Z) for
    I(Z;Ŷ) and H(Z|S) for I(Z;Ŷ|S) (beyond them a constraint cannot bind, so the far corner is the unconstrained
    optimum), or to `max_bits` on both axes (a zoom). An axis whose loosest budget is 0 (every client holds one group,
    so I(Z;Ŷ|S) = 0 for any classifier) spans `FLAT_AXIS_BITS`, along which nothing changes."""
    if size < 2:
        raise FedsimError(f"--grid {size}: at least 2 budgets per axis")
    if max_bits is not None and not max_bits > 0:
        raise FedsimError(f"--max-bits {max_bits}: a number of bits > 0")
    entropies = group_entropies(counts)
    top_global = max_bits if max_bits is not None else max(entropies["H_Z"], FLAT_AXIS_BITS)
    top_local = max_bits if max_bits is not None else max(entropies["H_Z_given_S"], FLAT_AXIS_BITS)
    return np.linspace(0, top_global, size), np.linspace(0, top_local, size)


# Called after each row of the grid with (row index from 1, rows, seconds so far).
RowCallback = Callable[[int, int, float], None]


def solve_grid(trade_off: TradeOff, eps_global: Sequence[float], eps_local: Sequence[float],
               on_row: RowCallback | None = None) -> list[list[Bound]]:
    """bounds[i][j]: the bound under eps_global[i] and eps_local[j]."""
    started = time.perf_counter()
    grid = []
    for index, budget_global in enumerate(eps_global, start=1):
        grid.append([trade_off.solve(budget_global, budget_local) for budget_local in eps_local])
        if on_row is not None:
            on_row(index, len(eps_global), time.perf_counter() - started)
    return grid


# --- runs marked against the bound ---------------------------------------------------------------------------------

# Config keys that fix the clients' (Z, Y) distribution: a run that differs in one is refused.
SAME_DISTRIBUTION = ("dataset", "partition", "num_clients")
# Keys that change only the draw or the rows counted (the seed's data and partition, the validation share, the proxy
# set, noisy labels): a run that differs is marked against the bound of its own draw, built with its values.
SAME_DRAW = ("seed", "client.val_fraction", "server.proxy_size", "label_noise")


@dataclass(frozen=True)
class MarkedRun:
    """A finished run's final model: its disparities (bits) and pooled accuracy over the clients' validation rows,
    and the keys of its draw (`SAME_DRAW`) where they differ from the overrides'."""

    folder: str
    strategy: str
    seed: int | None
    global_bits: float
    local_bits: float
    accuracy: float
    draw: Mapping[str, Any] = field(default_factory=dict)


def _lookup(config: Mapping[str, Any], dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if dotted == "partition" and isinstance(value, Mapping):  # its seed is the run's seed, compared on its own
        value = {key: item for key, item in value.items() if key != "seed"}
    return value


def _with_draw(experiment: Mapping[str, Any], draw: Mapping[str, Any]) -> dict[str, Any]:
    """The experiment with a run's `SAME_DRAW` values (the partitioner's seed follows the seed)."""
    result = json.loads(json.dumps(experiment, default=str))
    for dotted, value in draw.items():
        *parents, last = dotted.split(".")
        node = result
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    if "seed" in draw and "seed" in result["partition"]:
        result["partition"]["seed"] = draw["seed"]
    return result


def find_run_folders(paths: Iterable[str | Path]) -> list[Path]:
    """Each path's run folders: the path itself if it holds a summary.json, else every folder below that does."""
    from .recorder import SUMMARY_FILE

    folders: list[Path] = []
    for path in map(Path, paths):
        if (path / SUMMARY_FILE).is_file():
            found = [path]
        else:
            found = sorted(summary.parent for summary in path.rglob(SUMMARY_FILE)) if path.is_dir() else []
        if not found:
            raise FedsimError(f"--runs {path}: no run folder (a folder with {SUMMARY_FILE}) there")
        folders += [folder for folder in found if folder not in folders]
    return folders


def read_run(folder: Path, experiment: Mapping[str, Any]) -> MarkedRun:
    """The run's audit from its summary.json and its draw from its config.yaml; a FedsimError if it differs from the
    experiment in a `SAME_DISTRIBUTION` key or has no audit."""
    import yaml

    from .recorder import CONFIG_FILE, SUMMARY_FILE
    from .run import describe_choices

    if not (folder / CONFIG_FILE).is_file():
        raise FedsimError(f"--runs {folder}: no {CONFIG_FILE} next to its {SUMMARY_FILE}")
    config = yaml.safe_load((folder / CONFIG_FILE).read_text()) or {}
    summary = json.loads((folder / SUMMARY_FILE).read_text())
    differing = [key for key in SAME_DISTRIBUTION if _lookup(config, key) != _lookup(experiment, key)]
    if differing:
        key = differing[0]
        raise FedsimError(f"--runs {folder}: its {key} ({_describe(_lookup(config, key))}) differs from the overrides' "
                          f"({_describe(_lookup(experiment, key))}); give the overrides of that run")
    audit = (summary.get("fairness") or {}).get("disparity") or {}
    if not all(isinstance(audit.get(key), (int, float)) for key in ("global", "local", "accuracy")):
        raise FedsimError(f"--runs {folder}: its {SUMMARY_FILE} has no fairness.disparity audit (global, local, "
                          "accuracy); runs from before the audit cannot be marked")
    strategy = (summary.get("choices") or {}).get("strategy") or describe_choices(config)["strategy"]
    seed = summary.get("seed", config.get("seed"))
    draw = {key: _lookup(config, key) for key in SAME_DRAW if _lookup(config, key) != _lookup(experiment, key)}
    return MarkedRun(str(folder), str(strategy), None if seed is None else int(seed),
                     max(float(audit["global"]), 0.0), max(float(audit["local"]), 0.0), float(audit["accuracy"]), draw)


def _describe(value: Any) -> str:
    if isinstance(value, Mapping):
        name = value.get("name") or str(value.get("_target_", "")).rsplit(".", 1)[-1]
        return f"{name} {json.dumps({k: v for k, v in value.items() if k not in ('_target_', 'name')}, default=str)}"
    return json.dumps(value, default=str)


def mark_runs(runs: Sequence[MarkedRun], bound_of: Callable[[MarkedRun], float]
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Each run with `bound_of(run)`, the best accuracy any classifier reaches within the run's disparities on its
    federation's rows, and the gap to it; and each strategy's mean over its runs (seeds) of all of these."""
    marked = []
    for run in runs:
        bound = bound_of(run)
        marked.append({"folder": run.folder, "strategy": run.strategy, "seed": run.seed, "global": run.global_bits,
                       "local": run.local_bits, "accuracy": run.accuracy, "bound": bound, "gap": bound - run.accuracy,
                       "own_draw": sorted(run.draw)})
    strategies = []
    for name in dict.fromkeys(run.strategy for run in runs):
        mine = [entry for entry in marked if entry["strategy"] == name]
        strategies.append({"strategy": name, "runs": len(mine), **{
            key: float(np.mean([entry[key] for entry in mine])) for key in ("global", "local", "accuracy", "bound",
                                                                            "gap")}})
    return marked, strategies


# --- the whole command ---------------------------------------------------------------------------------------------

def fairness_bounds(experiment: Mapping[str, Any], grid_size: int = 10, rows: str = "all",
                    max_bits: float | None = None, run_paths: Sequence[str | Path] = (),
                    on_row: RowCallback | None = None, warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """`fedsim fairness-bounds`: the counts, the grid of bounds and the marked runs, as the report bounds.json
    holds. Run folders are read (and refused) before the grid is solved."""
    import cvxpy

    runs = [read_run(folder, experiment) for folder in find_run_folders(run_paths)]
    for key in dict.fromkeys(key for run in runs for key in run.draw):
        others, here = sum(key in run.draw for run in runs), _describe(_lookup(experiment, key))
        if warn is not None:
            warn(f"{others} of {len(runs)} runs differ from the overrides in {key} ({here} here): each is marked "
                 "against the bound of its own draw; the grid is this one's")
    counts = federation_counts(experiment, rows)
    trade_off = TradeOff(counts)
    eps_global, eps_local = budget_axes(counts, grid_size, max_bits)
    started = time.perf_counter()
    grid = solve_grid(trade_off, eps_global, eps_local, on_row)
    seconds = time.perf_counter() - started
    points = []
    for row in grid:
        for bound in row:
            terms = disparity(np.clip(bound.joint, 0, None))  # the solution's own disparities and their parts
            points.append({"eps_global": bound.eps_global, "eps_local": bound.eps_local, "accuracy": bound.accuracy,
                           "global": terms.global_disparity, "local": terms.local_disparity, "unique": terms.unique,
                           "redundant": terms.redundant, "masked": terms.masked})
    trade_offs = {"{}": trade_off}

    def bound_of(run: MarkedRun) -> float:
        key = json.dumps(run.draw, sort_keys=True, default=str)
        if key not in trade_offs:
            trade_offs[key] = TradeOff(federation_counts(_with_draw(experiment, run.draw), rows))
        return trade_offs[key].solve(run.global_bits, run.local_bits).accuracy

    marked, strategies = mark_runs(runs, bound_of)
    label_global, label_local = disparities(counts.label_joint())
    choices = experiment.get("choices") or {}
    return {
        "dataset": choices.get("dataset", experiment["dataset"].get("name")),
        "partition": choices.get("partition", str(experiment["partition"].get("_target_", "?")).rsplit(".", 1)[-1]),
        "num_clients": counts.num_clients,
        "seed": experiment.get("seed"),
        "rows": rows,
        "counts": counts.as_dict(),
        "entropy": group_entropies(counts),
        "label_disparity": {"global": label_global, "local": label_local},
        "unconstrained_accuracy": 1.0,
        "eps_global": eps_global.tolist(),
        "eps_local": eps_local.tolist(),
        "accuracy": [[bound.accuracy for bound in row] for row in grid],  # [i][j]: eps_global[i], eps_local[j]
        "points": points,
        "runs": marked,
        "strategies": strategies,
        "solver": {"method": f"cvxpy {cvxpy.__version__} ({trade_off.solver}, exponential cones)",
                   "statuses": sorted({bound.status for row in grid for bound in row}), "seconds": seconds},
    }


def write_report(out: Path, report: Mapping[str, Any]) -> dict[str, Path]:
    """bounds.csv (one row per grid point), bounds.json (everything) and bounds.png, written atomically."""
    from .fairness_bounds_plot import plot_bounds
    from .recorder import write_atomic

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(key for point in report["points"] for key in point))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: f"{value:.6g}" for key, value in point.items()} for point in report["points"])
    paths = {"csv": out / BOUNDS_CSV, "json": out / BOUNDS_JSON, "plot": out / BOUNDS_PLOT}
    write_atomic(paths["csv"], buffer.getvalue().encode())
    write_atomic(paths["json"], json.dumps(report, indent=2).encode())
    plot_bounds(report, paths["plot"])
    return paths


def bounds_tables(report: Mapping[str, Any]) -> list[Any]:
    """The accuracy grid (rows: local budget, loosest first as in the plot; columns: global budget) and, with runs,
    each strategy's position against the bound: rich Tables for the terminal."""
    from rich.table import Table

    grid = np.array(report["accuracy"])
    table = Table(title=f"best accuracy under I(Z;Ŷ) ≤ ε_g and I(Z;Ŷ|S) ≤ ε_l (bits); {report['dataset']}, "
                        f"{report['partition']}, {report['num_clients']} clients, {report['rows']} rows",
                  title_justify="left")
    table.add_column("ε_l \\ ε_g", justify="right", no_wrap=True)
    for budget in report["eps_global"]:
        table.add_column(f"{budget:.3f}", justify="right")
    for j in reversed(range(len(report["eps_local"]))):
        table.add_row(f"{report['eps_local'][j]:.3f}", *(f"{value:.4f}" for value in grid[:, j]))
    tables = [table]
    if report["strategies"]:
        runs = Table(title="runs against the bound at their disparities (mean over each strategy's runs)",
                     title_justify="left")
        for title in ("strategy", "runs", "I(Z;Ŷ)", "I(Z;Ŷ|S)", "accuracy", "bound", "gap"):
            runs.add_column(title, justify="left" if title == "strategy" else "right")
        for row in report["strategies"]:
            runs.add_row(row["strategy"], str(row["runs"]), *(f"{row[key]:.4f}" for key in
                                                               ("global", "local", "accuracy", "bound", "gap")))
        tables.append(runs)
    return tables
