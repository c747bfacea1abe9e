"""Running the grid resumably: a run whose folder holds a complete `summary.json` for the same config is skipped;
a run that was interrupted after a checkpoint (`checkpoint.pt`, same config) continues from it; any other folder
is cleared and run from scratch, and so is one whose checkpoint cannot be read (a disk that filled up, a copy cut
short): one broken point costs its own rounds, never the rest of the sweep.

`summary.json` is the last file a run writes with meaning (atomically, with `complete: true`), so a sweep killed
half way keeps every finished run and loses only the one in flight.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .. import checkpoint as checkpoint_module
from ..checkpoint import CHECKPOINT_FILE, CheckpointError
from ..config import resolve_auto_values
from ..errors import FedsimError
from ..recorder import CONFIG_FILE, SUMMARY_FILE
from .grid import GridPoint

RUNS_FOLDER = "runs"
LOCK_FILE = ".compare.lock"
# run_experiment's signature: (experiment, run folder, choices, show_progress) -> summary
RunFunction = Callable[..., Mapping[str, Any]]
# Called after each grid point with (point, index from 1 among the runs to do, runs to do, seconds, skipped).
PointCallback = Callable[[GridPoint, int, int, float, bool], None]


@dataclass
class SweepResult:
    ran: list[GridPoint]
    skipped: list[GridPoint]


def run_folder(out: Path, point: GridPoint) -> Path:
    return Path(out) / RUNS_FOLDER / point.folder


def is_complete(folder: Path, experiment: Mapping[str, Any] | None = None) -> bool:
    """Whether `folder` holds a finished run (of `experiment`, when given: a changed config means a new run)."""
    try:
        summary = json.loads((Path(folder) / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(summary, dict) or summary.get("complete") is not True:
        return False
    return experiment is None or _same_config(folder, experiment)


def can_resume(folder: Path, experiment: Mapping[str, Any]) -> bool:
    """Whether `folder` holds an interrupted run of `experiment` with a checkpoint to continue from."""
    return (Path(folder) / CHECKPOINT_FILE).exists() and _same_config(folder, experiment)


def _checkpoint_problem(folder: Path) -> CheckpointError | None:
    """Load the checkpoint before resuming from it, so that a broken one is found before a run starts on it."""
    try:
        checkpoint_module.load_checkpoint(folder)
    except CheckpointError as error:
        return error
    return None


def _same_config(folder: Path, experiment: Mapping[str, Any]) -> bool:
    try:
        stored = yaml.safe_load((Path(folder) / CONFIG_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return False
    return stored == json.loads(json.dumps(resolve_auto_values(experiment)))


def run_sweep(
    points: Sequence[GridPoint],
    experiments: Sequence[Mapping[str, Any]],
    out: Path,
    run: RunFunction | None = None,
    on_point: PointCallback | None = None,
    show_progress: bool = True,
) -> SweepResult:
    """Run every point whose folder is not complete; `experiments[i]` is the composed config of `points[i]`."""
    with _exclusive(Path(out)):
        return _run_points(points, experiments, Path(out), run, on_point, show_progress)


@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """One sweep per output folder at a time: two would clear each other's runs in flight."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK_FILE, "w") as handle:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            yield
            return
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise FedsimError(f"another fedsim compare is writing to {out}; "
                              "wait for it or choose another --out") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_points(points: Sequence[GridPoint], experiments: Sequence[Mapping[str, Any]], out: Path,
                run: RunFunction | None, on_point: PointCallback | None, show_progress: bool) -> SweepResult:
    if run is None:
        from ..run import run_experiment as run
    from ..run import describe_choices

    done = [is_complete(run_folder(out, p), e) for p, e in zip(points, experiments, strict=True)]
    todo = [(p, e) for p, e, finished in zip(points, experiments, done, strict=True) if not finished]
    skipped = [p for p, finished in zip(points, done, strict=True) if finished]
    for point in skipped:
        if on_point is not None:
            on_point(point, 0, len(todo), 0.0, True)
    for index, (point, experiment) in enumerate(todo, start=1):
        folder = run_folder(out, point)
        started = time.perf_counter()
        # the strategy option, not the row label (`fedavg`, not `fedavg+fedzip`): the encoding is its own group
        choices = {**describe_choices(experiment), "strategy": point.strategy_name}
        resumed = False
        if can_resume(folder, experiment):  # killed after a checkpoint: go on from there
            problem = _checkpoint_problem(folder)
            if problem is None:
                try:
                    run(experiment, folder, choices, show_progress, resume=True)
                    resumed = True
                except CheckpointError as error:  # what the run's own loader refuses
                    problem = error
            if problem is not None:
                _warn_broken(folder, problem)
        if not resumed:
            if folder.exists():
                shutil.rmtree(folder)  # a partial run without a (readable) checkpoint: start again from nothing
            run(experiment, folder, choices, show_progress)
        if on_point is not None:
            on_point(point, index, len(todo), time.perf_counter() - started, False)
    return SweepResult([p for p, _ in todo], skipped)


def _warn_broken(folder: Path, error: CheckpointError) -> None:
    """One line: which checkpoint, what is wrong with it (CheckpointError's advice to delete it is what happens)."""
    problem = str(error).splitlines()[0].split(": delete it", 1)[0] if str(error) else ""
    if str(folder) not in problem:
        problem = f"{folder / CHECKPOINT_FILE} cannot be read" + (f" ({problem})" if problem else "")
    logging.getLogger("fedsim").warning("%s; running this grid point again from scratch", problem)
