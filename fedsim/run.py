"""One federated run, from a resolved experiment config to a finished run folder."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from .build import build_model, traits_of
from .client import app as client_app
from .config import GROUPS, NO_COMPRESSION, resolve_auto_values, validate
from .data.federation import Federation, federation_for
from .devices import device_model
from .engines import check_engine_resources, make_engine
from .errors import ConfigError
from .partition_report import write_report
from .recorder import Recorder
from .server import make_server_app


def describe_choices(experiment: Mapping[str, Any]) -> dict[str, str]:
    """The config-group options of a run: those recorded when it was composed (`choices`, the file names in
    configs/<group>/), else, for an experiment built by hand, each group's `name` or class name."""
    recorded = experiment.get("choices") or {}
    if all(group in recorded for group in GROUPS):
        return {group: str(recorded[group]) for group in GROUPS}

    def short(entry: Mapping[str, Any]) -> str:
        return str(entry.get("name") or str(entry.get("_target_", "?")).rsplit(".", 1)[-1])

    return {group: str(recorded[group]) if group in recorded else short(experiment.get(group) or NO_COMPRESSION)
            for group in GROUPS}


def prepare_run(
    experiment: Mapping[str, Any],
    run_dir: str | Path,
    choices: Mapping[str, str] | None = None,
    recorder_class: type[Recorder] = Recorder,
) -> tuple[dict[str, Any], Recorder]:
    """Resolve and validate, load and partition (all before any training), open the run folder.

    Shared by simulations and the deployed ServerApp (`fedsim.deploy.server_app`), so both write the same folder.
    """
    experiment = resolve_auto_values(experiment)
    validate(experiment)
    federation = federation_for(experiment)  # data and partition errors surface here, before training
    _check_binary_labels(experiment, federation.data.num_classes)
    _check_slow_class(experiment, federation)
    flower_logger = logging.getLogger("flwr")
    flower_logger.setLevel(str(experiment.get("log_level", "WARNING")).upper())
    flower_logger.propagate = False  # Flower has its own console handler; don't print its lines twice
    choices = choices or describe_choices(experiment)
    recorder = recorder_class(Path(run_dir), experiment, federation.num_clients, choices)
    title = f"partition={choices['partition']} · dataset={choices['dataset']}"
    write_report(Path(run_dir), federation.label_counts(), title, federation.cluster_counts)
    return experiment, recorder


def _check_binary_labels(experiment: Mapping[str, Any], num_classes: int) -> None:
    """A strategy that declares `requires_binary_labels` (AgnosticFair's boundary distance) on a two-class task only:
    known once the data set has loaded, still before any training."""
    if traits_of(experiment).requires_binary_labels and num_classes != 2:
        raise ConfigError("dataset", experiment["dataset"].get("name"),
                          f"strategy {experiment['strategy']['_target_'].rsplit('.', 1)[-1]} needs a two-class task; "
                          f"this data set has {num_classes} classes (fair_synthetic and adult have two)")


def _check_slow_class(experiment: Mapping[str, Any], federation: Federation) -> None:
    """A slow group tied to a class (`devices.slow_class`) is known once the partition is: a class out of range, or
    one no client holds most of, is refused before the run folder opens."""
    if (experiment.get("devices") or {}).get("slow_class") is not None:
        device_model(experiment["devices"], federation.num_clients, int(experiment["seed"]), federation.label_counts())


def _model_builder(experiment: Mapping[str, Any]) -> Callable[[], torch.nn.Module]:
    """Builds the experiment's model for an engine to look at its layers, leaving the global random state as it was."""
    def build() -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            return build_model(experiment, federation_for(experiment).data)

    return build


def run_experiment(
    experiment: Mapping[str, Any],
    run_dir: str | Path,
    choices: Mapping[str, str] | None = None,
    show_progress: bool | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Validate, load and partition (all before any training), then run on the configured engine.

    With `resume`, a run folder holding a checkpoint continues from it (`fedsim resume <run folder>`).
    Returns the summary also written to `run_dir/summary.json`.
    """
    experiment = resolve_auto_values(experiment)
    validate(experiment)
    check_engine_resources(experiment["engine"])  # engine=flower: a Ray request no node holds fails here, before data
    experiment, recorder = prepare_run(experiment, run_dir, choices)
    progress = bool(experiment.get("progress", True)) if show_progress is None else show_progress
    server_app, outcome = make_server_app(experiment, recorder, progress, resume)
    engine = make_engine(experiment["engine"], experiment["device"], _model_builder(experiment))
    engine.run(server_app, client_app, recorder.num_clients)
    if "summary" not in outcome:
        raise RuntimeError("the ServerApp ended without a summary; see the log above for the cause")
    return outcome["summary"]
