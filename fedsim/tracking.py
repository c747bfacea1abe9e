"""Experiment tracking: every round's metrics.csv row and the run's config, also sent where researchers look.

`tracking=tensorboard|mlflow|wandb` (configs/tracking/) picks one tracker; `tracking=none`, the default, sends nothing
and metrics.csv stays the record. The libraries are optional extras (`pip install 'fedsim[tracking]'`) and load only
when chosen: config validation imports the chosen one, so a missing package is one line before any work.

Each numeric column goes under its metrics.csv name at step = round; `round` is the step, not a value. The text column
`sampled` goes as text where the library keeps text per step (TensorBoard, W&B); MLflow gets metrics.csv itself as an
artifact when the run ends.

Resume: `tracking.json` in the run folder names the tracked run, so `fedsim resume` continues that run. Rounds logged
before the stop and run again from the last checkpoint are treated as each library allows: TensorBoard drops its
events from the first re-run round on (`purge_step`) and takes the new values, so it matches metrics.csv exactly;
MLflow and W&B cannot overwrite a step, so they keep the first values and skip the re-run rounds. A resumed run
recomputes the same numbers (tests/test_resume.py), so only `round_seconds` and `wall_seconds` can differ there.
"""

from __future__ import annotations

import importlib
import json
import logging
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError, FedsimError

STATE_FILE = "tracking.json"
NONE = "none"
# tracker name -> (module that must import, pip extra that installs it)
LIBRARIES: dict[str, tuple[str, str]] = {
    "tensorboard": ("torch.utils.tensorboard", "tensorboard"),
    "mlflow": ("mlflow", "mlflow"),
    "wandb": ("wandb", "wandb"),
}
WANDB_MODES = ("offline", "online")
MLFLOW_PARAM_CHARS = 6000  # MLflow's limit on one param value; config.yaml goes along as an artifact in full
MLFLOW_BATCH = {"metrics": 1000, "params": 100}  # MLflow's per-request limits of log_batch

log = logging.getLogger("fedsim")


def tracking_settings(experiment: Mapping[str, Any]) -> dict[str, Any]:
    """The experiment's `tracking` entry; experiments written before trackers existed have none."""
    return dict(experiment.get("tracking") or {"name": NONE})


def validate_tracking(experiment: Mapping[str, Any]) -> None:
    """Refuse a bad `tracking` entry, and a tracker whose library cannot be imported, in one line each."""
    settings = tracking_settings(experiment)
    name = settings.get("name", NONE)
    if name == NONE:
        return
    if name not in LIBRARIES:
        raise ConfigError("tracking.name", name, f"one of {', '.join([NONE, *LIBRARIES])}")
    for key in ("dir", "run_name", "project", "experiment"):
        value = settings.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(f"tracking.{key}", value, "a non-empty string, or null")
    if name == "wandb" and settings.get("mode", "offline") not in WANDB_MODES:
        raise ConfigError("tracking.mode", settings.get("mode"), f"one of {', '.join(WANDB_MODES)}")
    module, extra = LIBRARIES[name]
    try:
        importlib.import_module(module)
    except ImportError as error:
        raise FedsimError(f"tracking={name} needs the {extra} package, which cannot be imported here ({error}): "
                          f"pip install 'fedsim[{extra}]' (in a clone: pip install -e '.[{extra}]')") from None


def open_tracker(run_dir: Path, experiment: Mapping[str, Any], choices: Mapping[str, str]) -> Tracker:
    """The experiment's tracker for the run folder `run_dir`. Nothing is opened (nor imported) before its first row."""
    name = tracking_settings(experiment).get("name", NONE)
    classes: dict[str, type[LibraryTracker]] = {"tensorboard": TensorBoardTracker, "mlflow": MlflowTracker,
                                                "wandb": WandbTracker}
    return classes[name](Path(run_dir), experiment, choices) if name in classes else Tracker()


def split_row(row: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    """A metrics.csv row as (numbers, texts) by column, without the round (the step) and the empty cells."""
    numbers: dict[str, float] = {}
    texts: dict[str, str] = {}
    for key, value in row.items():
        if key == "round" or value is None or value == "":
            continue
        try:
            numbers[key] = float(value)
        except (TypeError, ValueError):
            texts[key] = str(value)
    return numbers, texts


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config as dotted keys with JSON values (`client.lr` -> `0.1`), for libraries with flat parameters."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = value if isinstance(value, str) else json.dumps(value, default=str)
    return flat


class Tracker:
    """Where a run's rows go besides metrics.csv. This base class is `tracking=none`: it drops them."""

    def log_round(self, row: Mapping[str, Any]) -> None:
        """Send one metrics.csv row (called right after the row is written)."""

    def close(self) -> None:
        """The run finished: mark the tracked run complete and let go of files and processes."""


class LibraryTracker(Tracker):
    """A tracker backed by a library, opened at its first row, once it is known where a resumed run starts.

    The run it tracks is named in `tracking.json` (`run_name`, `location`, a library `run_id`, `logged_through`: the
    last round sent), so a resumed run goes on in the same place even when started from another working folder.
    A library error turns tracking off with a warning, never the run: the run folder keeps every row.
    """

    name = ""
    relogs = False  # whether rounds already logged are sent again after a restart (the library replaces them)

    def __init__(self, run_dir: Path, experiment: Mapping[str, Any], choices: Mapping[str, str]) -> None:
        self.run_dir = run_dir
        self.experiment = experiment
        self.choices = dict(choices)
        self.settings = tracking_settings(experiment)
        self.state: dict[str, Any] = {}
        self._opened = False
        self._failed = False

    def log_round(self, row: Mapping[str, Any]) -> None:
        if self._failed:
            return
        step = int(row["round"])
        try:
            if not self._opened:
                self._start(step)
            if step <= self.state["logged_through"] and not self.relogs:
                return
            numbers, texts = split_row(row)
            self._log(step, numbers, texts)
            self.state["logged_through"] = max(step, self.state["logged_through"])
            self._save_state()
        except Exception as error:  # pylint: disable=broad-exception-caught  # the run goes on without its tracker
            self._give_up(error)

    def close(self) -> None:
        if self._opened and not self._failed:
            try:
                self._finish()
            except Exception as error:  # pylint: disable=broad-exception-caught
                self._give_up(error)

    def _give_up(self, error: Exception) -> None:
        self._failed = True
        log.warning("tracking=%s turned off for the rest of the run (%s: %s); metrics.csv has every round",
                    self.name, type(error).__name__, error)

    def _start(self, first_round: int) -> None:
        stored = self._load_state()
        resuming = stored is not None
        self.state = stored or {"tracker": self.name, "run_name": self.settings.get("run_name") or self._default_name(),
                                "logged_through": -1}
        self._open(first_round, resuming)
        self._opened = True
        self._save_state()

    def _load_state(self) -> dict[str, Any] | None:
        path = self.run_dir / STATE_FILE
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return stored if isinstance(stored, dict) and stored.get("tracker") == self.name else None

    def _save_state(self) -> None:
        from .recorder import write_atomic

        write_atomic(self.run_dir / STATE_FILE, json.dumps(self.state, indent=2).encode())

    def _default_name(self) -> str:
        """The run folder's path from the working folder (`outputs/2026-05-01/14-03-22_fedavg_digits`): unique
        where the folder name alone is not (`fedsim compare` names its run folders `seed0`, `seed1`, ...)."""
        folder = self.run_dir.resolve()
        try:
            return str(folder.relative_to(Path.cwd()))
        except ValueError:
            return str(folder).lstrip("/")

    def _location(self, default: Path) -> str:
        """`tracking.dir` made absolute (it is stored in tracking.json, so a resume finds it from anywhere)."""
        configured = self.settings.get("dir")
        return str(Path(configured).expanduser().resolve() if configured else default.resolve())

    def _config_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(json.loads(json.dumps(dict(self.experiment), default=str)), sort_keys=False)

    def _open(self, first_round: int, resuming: bool) -> None:
        raise NotImplementedError

    def _log(self, step: int, numbers: dict[str, float], texts: dict[str, str]) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        raise NotImplementedError


class TensorBoardTracker(LibraryTracker):
    """Event files in `<run folder>/tensorboard`, or `<tracking.dir>/<run name>` (one TensorBoard for many runs).

    Each column is a scalar; `sampled` and the config (YAML, at the first round) are text. A restart passes
    `purge_step` = its first round, so TensorBoard drops the older events from there on and shows the re-run's.
    """

    name = "tensorboard"
    relogs = True

    def _open(self, first_round: int, resuming: bool) -> None:
        from torch.utils.tensorboard import SummaryWriter

        if "location" not in self.state:
            configured = self.settings.get("dir")
            self.state["location"] = (str(Path(self._location(self.run_dir)) / self.state["run_name"]) if configured
                                      else self._location(self.run_dir / "tensorboard"))
        self._writer = SummaryWriter(self.state["location"], purge_step=first_round)
        if first_round == 0 or not resuming:  # a restart from a checkpoint keeps the config logged at the start
            self._writer.add_text("config", f"```yaml\n{self._config_yaml()}```", first_round)

    def _log(self, step: int, numbers: dict[str, float], texts: dict[str, str]) -> None:
        for key, value in numbers.items():
            self._writer.add_scalar(key, value, step)
        for key, text in texts.items():
            self._writer.add_text(key, text, step)
        self._writer.flush()  # a killed run keeps every round it logged

    def _finish(self) -> None:
        self._writer.close()


class MlflowTracker(LibraryTracker):
    """An MLflow run in experiment `tracking.experiment`; the store is `tracking.dir`.

    `tracking.dir` is a folder (default `<run folder>/mlflow`), holding a SQLite store `mlflow.db` and `artifacts/`,
    or any MLflow tracking URI (`http://host:5000`, `sqlite:///path.db`). MLflow 3 refuses its plain-file store
    (`./mlruns`) unless MLFLOW_ALLOW_FILE_STORE=true, and recommends SQLite; a `file:` URI still works with that set.
    Params are the config as dotted keys; config.yaml, and at the end metrics.csv and summary.json, are artifacts.
    """

    name = "mlflow"

    def _open(self, first_round: int, resuming: bool) -> None:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its "creating database tables" INFO lines
        artifacts = None
        if "location" not in self.state:
            configured = str(self.settings.get("dir") or "")
            if "://" in configured or configured.startswith("sqlite:"):
                self.state["location"] = configured
            else:
                folder = Path(self._location(self.run_dir / "mlflow"))
                folder.mkdir(parents=True, exist_ok=True)
                self.state["location"] = f"sqlite:///{folder / 'mlflow.db'}"
                artifacts = (folder / "artifacts").as_uri()
        self._client = MlflowClient(tracking_uri=self.state["location"])
        run_id = self.state.get("run_id")
        if run_id:
            try:
                self._client.update_run(run_id, status="RUNNING")
                return
            except MlflowException:  # the store was deleted or moved: start a new tracked run
                self.state["logged_through"] = -1
        self.state["run_id"] = self._create_run(artifacts)

    def _create_run(self, artifacts: str | None) -> str:
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException

        name = str(self.settings.get("experiment") or "fedsim")
        found = self._client.get_experiment_by_name(name)
        if found is None:
            try:
                experiment_id = self._client.create_experiment(name, artifact_location=artifacts)
            except MlflowException:  # another run created it meanwhile
                experiment_id = self._client.get_experiment_by_name(name).experiment_id
        else:
            experiment_id = found.experiment_id
        tags = {**self.choices, "fedsim.run_dir": str(self.run_dir.resolve())}
        run_id = self._client.create_run(experiment_id, run_name=self.state["run_name"], tags=tags).info.run_id
        params = [Param(key, value[:MLFLOW_PARAM_CHARS]) for key, value in flatten(self.experiment).items()]
        for start in range(0, len(params), MLFLOW_BATCH["params"]):
            self._client.log_batch(run_id, params=params[start:start + MLFLOW_BATCH["params"]])
        self._client.log_text(run_id, self._config_yaml(), "config.yaml")
        return run_id

    def _log(self, step: int, numbers: dict[str, float], texts: dict[str, str]) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        # MLflow stores inf as the largest float
        metrics = [Metric(key, value, stamp, step) for key, value in numbers.items()]
        for start in range(0, len(metrics), MLFLOW_BATCH["metrics"]):
            self._client.log_batch(self.state["run_id"], metrics=metrics[start:start + MLFLOW_BATCH["metrics"]])

    def _finish(self) -> None:
        from .recorder import METRICS_FILE, SUMMARY_FILE

        for name in (METRICS_FILE, SUMMARY_FILE):
            if (self.run_dir / name).exists():
                self._client.log_artifact(self.state["run_id"], str(self.run_dir / name))
        self._client.set_terminated(self.state["run_id"], "FINISHED")


class WandbTracker(LibraryTracker):
    """A W&B run in project `tracking.project`, offline by default: `<tracking.dir or run folder>/wandb/offline-run-*`,
    uploaded later with `wandb sync`. Columns and `sampled` go into the run's history at step = round; the config is
    the run's config. A restart opens the same run id again (`resume="allow"`), which W&B writes as a second offline
    folder of that run; sync both.
    """

    name = "wandb"

    def _open(self, first_round: int, resuming: bool) -> None:
        import wandb

        folder = Path(self.state.setdefault("location", self._location(self.run_dir)))
        folder.mkdir(parents=True, exist_ok=True)
        run_id = self.state.setdefault("run_id", secrets.token_hex(4))  # W&B ids: lowercase letters and digits
        self._run = wandb.init(
            project=str(self.settings.get("project") or "fedsim"), dir=str(folder), id=run_id,
            name=self.state["run_name"], mode=str(self.settings.get("mode", "offline")), resume="allow",
            config=json.loads(json.dumps(dict(self.experiment), default=str)),
            tags=[f"{group}={choice}"[:64] for group, choice in self.choices.items()], reinit="create_new",
            settings=wandb.Settings(console="off", silent=True),  # the progress bar owns the console
        )

    def _log(self, step: int, numbers: dict[str, float], texts: dict[str, str]) -> None:
        self._run.log({**numbers, **texts}, step=step)

    def _finish(self) -> None:
        self._run.finish()
