"""The contract every configured strategy passes (scikit-learn's `check_estimator` is the model).

Each check runs over every YAML in configs/strategy/, so a new strategy is covered without being listed here. A round
is real: the strategy's own train instructions go to fedsim's ClientApp on the in-process engine's Grid, and its
replies come back to the strategy. A strategy that needs data with a sensitive attribute gets fair_synthetic, as its
declaration (`requires_sensitive_attribute`) says.
"""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Error, Message
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.supercore.task_identity import TaskIdentity

from fedsim.build import build_model, traits_of
from fedsim.checkpoint import capture, load_checkpoint, restore_strategy, save_checkpoint
from fedsim.client import app as client_app
from fedsim.config import compose_experiment, group_options, validate
from fedsim.data.federation import federation_for
from fedsim.engines.inprocess import RUN_ID, InProcessGrid
from fedsim.errors import ConfigError
from fedsim.protocol.capabilities import PreparesFederation
from fedsim.protocol.constraints import Interval, Options
from fedsim.protocol.experiment import experiment_record
from fedsim.protocol.keys import LOCAL_EPOCHS_KEY
from fedsim.server import build_strategy

from .conftest import data_for

STRATEGIES = group_options("strategy")
SMALL = ["num_clients=4", "num_rounds=2", "client.local_epochs=1", "device=cpu", "progress=false"]


def _experiment(name: str, *overrides: str) -> dict:
    return compose_experiment([f"strategy={name}", *SMALL, *data_for(name), *overrides])


class Federation:
    """A strategy, the initial global model and an in-process Grid of fedsim ClientApps, for one experiment."""

    def __init__(self, experiment: dict) -> None:
        from fedsim.config import resolve_auto_values

        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, RUN_ID, SUPERLINK_NODE_ID  # the server's
        self.experiment = resolve_auto_values(experiment)
        self.data = federation_for(self.experiment)
        self.grid = InProcessGrid(client_app, int(self.experiment["num_clients"]))
        torch.manual_seed(int(self.experiment["seed"]))  # as the ServerApp does before building the initial model
        self.arrays = ArrayRecord(build_model(self.experiment, self.data.data).state_dict())

    def strategy(self):  # type: ignore[no-untyped-def]
        """The strategy built from the config, with its stage before training run (`PreparesFederation`)."""
        strategy = build_strategy(self.experiment, self.data)
        if isinstance(strategy, PreparesFederation):
            strategy.prepare(self.grid, experiment_record(self.experiment), timeout=600)
        return strategy

    def instructions(self, strategy, server_round: int, arrays: ArrayRecord | None = None) -> list[Message]:  # type: ignore[no-untyped-def]
        random.seed(server_round)  # Flower samples nodes with `random`
        return list(strategy.configure_train(server_round, arrays or self.arrays, experiment_record(self.experiment),
                                             self.grid))

    def replies(self, instructions: list[Message]) -> list[Message]:
        return list(self.grid.send_and_receive(instructions, timeout=600))


def _same_arrays(a: ArrayRecord | None, b: ArrayRecord | None) -> bool:
    assert a is not None and b is not None
    return list(a.keys()) == list(b.keys()) and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a.keys())


def _error_reply(instruction: Message) -> Message:
    return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, "the client crashed"), reply_to=instruction)


@pytest.mark.parametrize("name", STRATEGIES)
def test_it_aggregates_valid_replies_into_a_new_model_of_the_same_shape(name):
    federation = Federation(_experiment(name))
    strategy = federation.strategy()
    replies = federation.replies(federation.instructions(strategy, 1))
    aggregated, _ = strategy.aggregate_train(1, replies)
    assert aggregated is not None and list(aggregated.keys()) == list(federation.arrays.keys())
    for key in aggregated.keys():
        new, old = aggregated[key].numpy(), federation.arrays[key].numpy()
        assert new.shape == old.shape and new.dtype == old.dtype and np.isfinite(new).all()
    assert not _same_arrays(aggregated, federation.arrays)
    weights = getattr(strategy, "client_weights", None)
    assert weights is None or set(weights) == {reply.metadata.src_node_id for reply in replies}


@pytest.mark.parametrize("name", STRATEGIES)
def test_error_replies_are_skipped_as_if_never_sent(name):
    federation = Federation(_experiment(name))
    first, second = federation.strategy(), federation.strategy()
    instructions = federation.instructions(first, 1)
    assert ([m.content["config"] for m in federation.instructions(second, 1)]
            == [m.content["config"] for m in instructions])
    replies = federation.replies(instructions)
    with_error, _ = first.aggregate_train(1, [_error_reply(instructions[0]), *replies[1:]])
    without, _ = second.aggregate_train(1, replies[1:])
    assert _same_arrays(with_error, without)
    assert federation.strategy().aggregate_train(1, [_error_reply(m) for m in instructions]) == (None, None)


@pytest.mark.parametrize("name", STRATEGIES)
def test_it_gives_the_same_result_twice_with_the_same_seed(name):
    results = []
    for _ in range(2):
        federation = Federation(_experiment(name))
        strategy = federation.strategy()
        aggregated, _ = strategy.aggregate_train(1, federation.replies(federation.instructions(strategy, 1)))
        results.append(aggregated)
    assert _same_arrays(*results)


@pytest.mark.parametrize("name", STRATEGIES)
def test_it_survives_a_checkpoint_and_resumes_identically(name, tmp_path):
    federation = Federation(_experiment(name))
    running = federation.strategy()
    arrays, _ = running.aggregate_train(1, federation.replies(federation.instructions(running, 1)))
    save_checkpoint(tmp_path, capture(1, arrays, running, {}, federation.grid.node_states()))
    resumed = federation.strategy()  # built afresh from the config, as `fedsim resume` does
    restore_strategy(resumed, load_checkpoint(tmp_path))
    instructions = federation.instructions(running, 2, arrays)
    assert ([m.content["config"] for m in federation.instructions(resumed, 2, arrays)]
            == [m.content["config"] for m in instructions])
    replies = federation.replies(instructions)
    after_running, _ = running.aggregate_train(2, replies)
    after_resumed, _ = resumed.aggregate_train(2, replies)
    assert _same_arrays(after_running, after_resumed)
    assert getattr(running, "client_weights", None) == getattr(resumed, "client_weights", None)


def _bad_values(constraints: list) -> list:
    """Values none of a parameter's constraints allows: below an interval's lower end, a string no option names."""
    candidates: list = ["no-such-option"]
    for constraint in constraints:
        if isinstance(constraint, Interval) and constraint.left is not None:
            candidates.append(constraint.left - 1)
    return [v for v in candidates if not any(c.allows(v) for c in constraints if isinstance(c, (Interval, Options)))
            and not any(isinstance(c, type) and isinstance(v, c) for c in constraints)]


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_parameter_it_is_configured_with_is_declared_and_a_bad_value_is_refused_in_one_line(name, monkeypatch):
    import fedsim.run

    def no_data(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("data was loaded before the bad value was refused")

    monkeypatch.setattr(fedsim.run, "federation_for", no_data)
    experiment = _experiment(name)
    constraints = traits_of(experiment).parameter_constraints
    configured = [key for key in experiment["strategy"] if key not in ("_target_", "client_optimizer")]
    assert [key for key in configured if key not in constraints] == [], (
        f"{name} sets parameters it declares no constraint for")
    for key in configured:
        for bad in _bad_values(constraints[key]):
            tampered = copy.deepcopy(experiment)
            tampered["strategy"][key] = bad
            with pytest.raises(ConfigError) as refused:
                fedsim.run.run_experiment(tampered, "unused")
            message = str(refused.value)
            assert message.startswith(f"strategy.{key}=") and "\n" not in message


@pytest.mark.parametrize("name", STRATEGIES)
def test_it_honours_stragglers_or_refuses_them_in_one_line(name):
    if not traits_of(_experiment(name)).supports_stragglers:
        with pytest.raises(ConfigError, match=r"^stragglers\.fraction="):
            validate(_experiment(name, "stragglers.fraction=0.5"))
        return
    epochs = 2  # stragglers under `partial` train 1 epoch
    for mode in ("drop", "partial"):
        federation = Federation(_experiment(name, "stragglers.fraction=0.5", f"strategy.straggler_mode={mode}",
                                            f"client.local_epochs={epochs}"))
        strategy = federation.strategy()
        instructions = federation.instructions(strategy, 1)
        shortened = [m for m in instructions if int(m.content["config"].get(LOCAL_EPOCHS_KEY, epochs)) < epochs]
        assert strategy.round_scalars["stragglers"] == 2
        assert (len(instructions), len(shortened)) == ((2, 0) if mode == "drop" else (4, 2))
        aggregated, _ = strategy.aggregate_train(1, federation.replies(instructions))
        needed = strategy.min_replies() if hasattr(strategy, "min_replies") else 1  # Bulyan: 4f + 3
        assert (aggregated is not None) == (len(instructions) >= needed)
