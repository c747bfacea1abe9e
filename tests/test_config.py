"""Bad input is refused before any training, with one line naming the key, the value and what is allowed."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from numbers import Real
from typing import Any

import pytest
from flwr.serverapp.strategy import FedAvg
from flwr_datasets.partitioner import IidPartitioner

from fedsim.config import check_group_overrides, compose_experiment, group_options, validate
from fedsim.data import build_federation
from fedsim.data.builtin import Digits
from fedsim.errors import ConfigError, DataError, FedsimError
from fedsim.protocol.constraints import Interval, InvalidParameter, Options
from fedsim.testing.refused_configs import BAD_VALUES


def test_default_config_is_the_main_job():
    experiment = compose_experiment()
    validate(experiment)
    assert experiment["dataset"]["name"] == "digits"
    assert experiment["num_clients"] == 10 and experiment["num_rounds"] == 20
    assert (experiment["partition"]["alpha"] == 0.5
            and experiment["partition"]["_target_"].endswith("DirichletPartitioner"))
    assert experiment["model"]["_target_"] == "fedsim.models.MLP"
    assert experiment["strategy"]["_target_"] == "fedsim.strategies.FedAvg"  # Flower's FedAvg + stragglers
    assert experiment["strategy"]["stragglers_fraction"] == 0.0 and experiment["server"]["proxy_size"] == 0
    assert (experiment["engine"]["name"] == "inprocess"
            and experiment["engine"]["_target_"] == "fedsim.engines.InProcessEngine")
    assert experiment["dataset"]["_target_"] == "fedsim.data.Digits"


def test_every_group_has_its_options():
    assert {"iid", "dirichlet", "shard", "pathological", "natural", "niid2", "classes_per_client", "quantity",
            "embedding", "semantic"} <= set(group_options("partition"))
    assert {"logreg", "mlp", "cnn", "resnet"} <= set(group_options("model"))
    assert {"inprocess", "flower"} <= set(group_options("engine"))
    assert {"digits", "synthetic", "mnist", "fashion_mnist", "cifar10", "hf", "local"} <= set(group_options("dataset"))


def _refusal(overrides: list[str]) -> ConfigError:
    with pytest.raises(ConfigError) as raised:
        validate(compose_experiment(overrides))
    message = str(raised.value)
    assert message.startswith(f"{raised.value.key}=") and "\n" not in message
    assert message.endswith(f"is not allowed: {raised.value.allowed}")
    return raised.value


@pytest.mark.parametrize("overrides, key", BAD_VALUES)
def test_bad_values_name_their_key(overrides, key):
    assert _refusal(overrides).key == key


# --- declarations: config.py checks what a class declares, without knowing the class ------------------------------

FLOWER_FEDAVG = ["strategy._target_=flwr.serverapp.strategy.FedAvg", "~strategy.stragglers_fraction",
                 "~strategy.straggler_mode", "~strategy.local_epochs", "~strategy.seed"]


class PickyFedAvg(FedAvg):
    """A strategy config.py has never heard of, declaring what its arguments may be."""

    _parameter_constraints = {"fraction_train": [Interval(Real, 0.5, 1, closed="both")], "mood": [Options({"calm"})]}

    def __init__(self, mood: str = "calm", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mood = mood


class NeedsGroups(FedAvg):
    """A strategy whose clients report group counts: its data needs a sensitive attribute."""

    requires_sensitive_attribute = True


class EvenIidPartitioner(IidPartitioner):
    """A partitioner declaring a constraint on its own argument and a rule across two of them."""

    _parameter_constraints = {"parity": [Options({"even", "odd"})]}

    def __init__(self, num_partitions: int, parity: str = "even") -> None:
        super().__init__(num_partitions)
        self.parity = parity

    @classmethod
    def check_arguments(cls, arguments: Mapping[str, Any]) -> None:
        if arguments["parity"] == "even" and arguments["num_partitions"] % 2:
            raise InvalidParameter("parity", "even", f"odd, for num_partitions={arguments['num_partitions']}")


class GroupedDigits(Digits):
    """A data set loader declaring rows with a sensitive attribute."""

    has_sensitive_attribute = True


def test_a_strategys_declared_constraints_are_checked():
    picky = [*FLOWER_FEDAVG, f"strategy._target_={__name__}.PickyFedAvg"]
    validate(compose_experiment([*picky, "+strategy.mood=calm"]))
    refused = _refusal([*picky, "fraction_train=0.3"])
    assert (refused.key, refused.value, refused.allowed) == ("strategy.fraction_train", 0.3, "a number in [0.5, 1]")
    refused = _refusal([*picky, "+strategy.mood=grumpy"])
    assert (refused.key, refused.value, refused.allowed) == ("strategy.mood", "grumpy", "one of calm")


def test_a_partitioners_declarations_are_checked():
    even = ["partition=iid", f"partition._target_={__name__}.EvenIidPartitioner"]
    validate(compose_experiment([*even, "+partition.parity=odd"]))
    refused = _refusal([*even, "+partition.parity=prime"])
    assert (refused.key, refused.value) == ("partition.parity", "prime") and "even" in refused.allowed
    refused = _refusal([*even, "+partition.parity=even", "num_clients=7"])
    assert (refused.key, refused.value, refused.allowed) == ("partition.parity", "even", "odd, for num_partitions=7")


def test_a_data_set_without_a_sensitive_attribute_is_refused_for_a_strategy_needing_one():
    needs_groups = [*FLOWER_FEDAVG, f"strategy._target_={__name__}.NeedsGroups"]
    refused = _refusal(needs_groups)
    assert (refused.key, refused.value) == ("dataset", "digits")
    assert refused.allowed == "strategy NeedsGroups needs a sensitive attribute: one of adult, fair_synthetic"
    validate(compose_experiment([*needs_groups, "dataset=fair_synthetic"]))
    validate(compose_experiment([*needs_groups, f"dataset._target_={__name__}.GroupedDigits"]))


def test_stragglers_are_refused_for_a_strategy_that_cannot_honour_them():
    refused = _refusal([*FLOWER_FEDAVG, "stragglers.fraction=0.5"])
    assert ((refused.key, refused.value) == ("stragglers.fraction", 0.5)
            and "strategy FedAvg, which does not declare supports_stragglers" in refused.allowed)
    validate(compose_experiment([*FLOWER_FEDAVG, "stragglers.fraction=0"]))


@pytest.mark.parametrize("group, target", [("dataset", "fedsim.models.MLP"), ("engine", "fedsim.data.Digits"),
                                           ("dataset", "subprocess.Popen"), ("engine", "os.system")])
def test_data_set_and_engine_targets_must_be_of_their_kind(group, target):
    experiment = compose_experiment([])
    experiment[group]["_target_"] = target
    with pytest.raises(ConfigError) as raised:
        validate(experiment)
    assert raised.value.key == f"{group}._target_" and "subclass of fedsim." in raised.value.allowed


@pytest.mark.parametrize("override, group", [("strategy=fedfoo", "strategy"), ("dataset=imagenet", "dataset"),
                                             ("model=transformer", "model"), ("engine=fedavg,warp", "engine")])
def test_unknown_group_options_list_what_exists(override, group):
    with pytest.raises(ConfigError) as raised:
        check_group_overrides([override])
    assert raised.value.key == group
    assert ", ".join(group_options(group)) in str(raised.value)


def test_unknown_key_is_one_line():
    with pytest.raises(FedsimError, match="client.lrr is not a fedsim config key"):
        compose_experiment(["client.lrr=0.1"])


def test_missing_required_value_is_named():
    with pytest.raises(ConfigError) as raised:
        compose_experiment(["dataset=hf"])
    assert raised.value.key == "dataset.hub_id"


def test_more_clients_than_samples():
    with pytest.raises(ConfigError) as raised:
        build_federation(compose_experiment(["num_clients=5000", "partition=iid"]))
    assert raised.value.key == "num_clients" and "1437" in str(raised.value)


def test_partition_that_leaves_a_client_empty():
    experiment = compose_experiment(["num_clients=200", "partition.alpha=0.01", "partition.min_partition_size=0"])
    with pytest.raises(DataError, match="without data"):
        build_federation(experiment)


def test_impossible_dirichlet_is_one_line_with_advice():
    with pytest.raises(DataError, match="larger partition.alpha"):
        build_federation(compose_experiment(["num_clients=100", "partition.alpha=0.01"]))


@pytest.mark.parametrize("args, expected", [(["partition.alpha=0"], "partition.alpha=0"),
                                            (["strategy=nope"], "strategy='nope'"),
                                            (["num_clients=5000", "partition=iid"], "num_clients=5000"),
                                            (["server.max_update_norm=-1"], "server.max_update_norm=-1"),
                                            (["strategy.min_train_nodes=50"], "strategy.min_train_nodes=50")])
def test_cli_exits_2_with_one_line_before_training(tmp_path, args, expected):
    completed = subprocess.run(
        [sys.executable, "-m", "fedsim.cli", *args, f"hydra.run.dir={tmp_path}/run"],
        capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 2
    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], completed.stderr
    assert not (tmp_path / "run" / "metrics.csv").exists()  # refused before any round ran


def test_auto_proxy_size_resolves_without_touching_the_callers_config():
    from fedsim.config import resolve_auto_values

    raw = {"strategy": {"_target_": "fedsim.strategies.FedLAW"}, "server": {"proxy_size": "auto"}}
    assert resolve_auto_values(raw)["server"]["proxy_size"] == 200
    assert raw["server"]["proxy_size"] == "auto"
    raw["strategy"]["_target_"] = "fedsim.strategies.FedAvg"
    assert resolve_auto_values(raw)["server"]["proxy_size"] == 0
