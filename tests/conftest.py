"""Shared helpers: compose experiments as the CLI does, run them quietly into a temporary folder, and build the
messages a strategy or a ClientApp receives."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedsim.build import build_model, traits_of
from fedsim.config import compose_experiment
from fedsim.data.federation import federation_for
from fedsim.protocol.experiment import experiment_record
from fedsim.protocol.keys import ARRAYS_RECORD, CONFIG_RECORD, METRICS_RECORD, NUM_EXAMPLES, ROUND_KEY, TRAIN_LOSS
from fedsim.run import run_experiment

# Strategy arguments under which every node trains each round and none evaluates, for tests that build the replies.
EVERY_NODE_TRAINS = {"fraction_train": 1.0, "fraction_evaluate": 0.0, "min_available_nodes": 1, "min_train_nodes": 1}
# A small data set with a sensitive attribute, for a strategy whose clients report group counts (FairFed).
SENSITIVE_DATA = ("dataset=fair_synthetic", "dataset.num_samples=400", "model=logreg")


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as stream:
        return list(csv.DictReader(stream))


@pytest.fixture
def run_quietly(tmp_path: Path):
    """Run an experiment from overrides; returns (summary, run folder)."""

    def _run(*overrides: str, name: str = "run") -> tuple[dict[str, Any], Path]:
        experiment = compose_experiment(["progress=false", *overrides])
        run_dir = tmp_path / name
        return run_experiment(experiment, run_dir, show_progress=False), run_dir

    return _run


class StoppedAfterCheckpoint(Exception):
    """Raised by `stop_after_checkpoint`: a stand-in for a kill right after a round's checkpoint."""


def stop_after_checkpoint(monkeypatch: pytest.MonkeyPatch, overrides: list[str], run_dir: Path,
                          server_round: int) -> None:
    """Run the experiment of `overrides` in `run_dir` until the checkpoint of `server_round` is written, then stop it
    there (in this process; `fedsim.testing.crash.kill_during` kills a real one). `resume=True` continues it."""
    import fedsim.checkpoint as checkpoint_module

    save = checkpoint_module.save_checkpoint

    def save_then_stop(folder: Path, checkpoint: Any) -> None:
        save(folder, checkpoint)
        if checkpoint.server_round == server_round:
            raise StoppedAfterCheckpoint

    monkeypatch.setattr(checkpoint_module, "save_checkpoint", save_then_stop)
    try:
        with pytest.raises(StoppedAfterCheckpoint):
            run_experiment(compose_experiment(overrides), run_dir, show_progress=False)
    finally:
        monkeypatch.setattr(checkpoint_module, "save_checkpoint", save)


def give_nodes_config(monkeypatch: pytest.MonkeyPatch, extras: dict[int, dict[str, Any]]) -> None:
    """Make every in-process run of this test give partition p's node the node-config entries `extras[p]`, as a
    SuperNode's `--node-config` would (e.g. a node told to `misbehave`)."""
    import fedsim.run

    make_engine = fedsim.run.make_engine

    def engine_with_node_config(*args: Any, **kwargs: Any):
        engine = make_engine(*args, **kwargs)
        engine.node_config_extras = extras
        return engine

    monkeypatch.setattr(fedsim.run, "make_engine", engine_with_node_config)


# What keeps a strategy's test run short: FedCollab's distance stage stops after a few rounds and restarts.
QUICK_SETTINGS = {"fedcollab": ("strategy.distance_rounds=6", "strategy.distance_eval_every=3",
                                "strategy.solver_restarts=2"),
                  # asynchronous: at most as many clients in flight as the tests' federations hold
                  "fedasync": ("strategy.concurrency=2",), "fedbuff": ("strategy.concurrency=2",)}


@cache
def data_for(strategy: str) -> tuple[str, ...]:
    """Overrides that give `strategy` data it can run on (a sensitive attribute where its class declares it needs
    one) and keep its test runs short (`QUICK_SETTINGS`)."""
    needs = traits_of(compose_experiment([f"strategy={strategy}"])).requires_sensitive_attribute
    return (SENSITIVE_DATA if needs else ()) + QUICK_SETTINGS.get(strategy, ())


# --- messages built outside an engine ------------------------------------------------------------------------------

def set_task_identity() -> None:
    """Flower's Message takes its sender from TaskIdentity, which an engine sets before a ServerApp runs; messages
    built outside one need it set."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1


@pytest.fixture
def task_identity() -> None:
    """`set_task_identity` before the test (`pytestmark = pytest.mark.usefixtures("task_identity")`)."""
    set_task_identity()


def train_reply(node_id: int, arrays: ArrayRecord | Mapping[str, np.ndarray], num_examples: int, *,
                train_loss: float = 1.0, metrics: Mapping[str, float] | None = None,
                records: Mapping[str, Any] | None = None) -> Message:
    """Node `node_id`'s reply to the train instruction `m<node_id>`, as a strategy's `aggregate_train` receives it:
    its weights, its metrics (`num-examples`, `train_loss`, then `metrics`) and any further `records`."""
    instruction = Message(RecordDict(), dst_node_id=node_id, message_type=MessageType.TRAIN)
    instruction.metadata.__dict__["_message_id"] = f"m{node_id}"
    if not isinstance(arrays, ArrayRecord):
        arrays = ArrayRecord({key: Array(np.ascontiguousarray(value)) for key, value in arrays.items()})
    content = RecordDict({ARRAYS_RECORD: arrays,
                          METRICS_RECORD: MetricRecord({NUM_EXAMPLES: num_examples, TRAIN_LOSS: train_loss,
                                                        **(metrics or {})}),
                          **(records or {})})
    return Message(content, reply_to=instruction)


def train_message(experiment: dict[str, Any], weights: Mapping[str, torch.Tensor] | None = None) -> Message:
    """Round 1's train instruction `m1` to node 7, as fedsim's ServerApp sends it: the global weights (by default
    the experiment's initial model) and the experiment in the config."""
    set_task_identity()
    if weights is None:
        weights = build_model(experiment, federation_for(experiment).data).state_dict()
    config = experiment_record(experiment)
    config[ROUND_KEY] = 1
    message = Message(RecordDict({ARRAYS_RECORD: ArrayRecord(weights), CONFIG_RECORD: config}), dst_node_id=7,
                      message_type=MessageType.TRAIN)
    message.metadata.__dict__["_message_id"] = "m1"
    return message


def messages_to(nodes: Iterable[int], message_type: str = MessageType.TRAIN,
                content: RecordDict | None = None) -> list[Message]:
    """One message to each node, all with `content` (an empty RecordDict each by default)."""
    set_task_identity()
    return [Message(content if content is not None else RecordDict(), dst_node_id=node, message_type=message_type)
            for node in nodes]
