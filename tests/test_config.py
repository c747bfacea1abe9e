"""Bad input is refused before any training, with one line naming the key, the value and what is allowed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fedsim.config import check_group_overrides, compose_experiment, group_options, validate
from fedsim.data import build_federation
from fedsim.errors import ConfigError, DataError, FedsimError


def test_default_config_is_the_main_job():
    experiment = compose_experiment()
    validate(experiment)
    assert experiment["dataset"]["name"] == "digits"
    assert experiment["num_clients"] == 10 and experiment["num_rounds"] == 20
    assert experiment["partition"]["alpha"] == 0.5 and experiment["partition"]["_target_"].endswith("DirichletPartitioner")
    assert experiment["model"]["_target_"] == "fedsim.models.MLP"
    assert experiment["strategy"]["_target_"] == "fedsim.strategies.FedAvg"  # Flower's FedAvg + stragglers
    assert experiment["strategy"]["stragglers_fraction"] == 0.0 and experiment["server"]["proxy_size"] == 0
    assert experiment["engine"]["name"] == "inprocess"


def test_every_group_has_its_options():
    assert {"iid", "dirichlet", "shard", "pathological", "natural", "niid2", "classes_per_client", "quantity", "embedding",
            "semantic"} <= set(
        group_options("partition")
    )
    assert {"logreg", "mlp", "cnn", "resnet"} <= set(group_options("model"))
    assert {"inprocess", "flower"} <= set(group_options("engine"))
    assert {"digits", "synthetic", "mnist", "fashion_mnist", "cifar10", "hf", "local"} <= set(group_options("dataset"))


BAD_VALUES = [
    (["partition.alpha=0"], "partition.alpha"),
    (["partition.alpha=-0.5"], "partition.alpha"),
    (["num_clients=0"], "num_clients"),
    (["num_rounds=0"], "num_rounds"),
    (["fraction_train=0"], "fraction_train"),
    (["fraction_train=1.5"], "fraction_train"),
    (["fraction_evaluate=-0.1"], "fraction_evaluate"),
    (["client.lr=0"], "client.lr"),
    (["client.lr=fast"], "client.lr"),
    (["client.momentum=1.0"], "client.momentum"),
    (["client.batch_size=0"], "client.batch_size"),
    (["client.local_epochs=0"], "client.local_epochs"),
    (["client.weight_decay=-1"], "client.weight_decay"),
    (["client.val_fraction=1"], "client.val_fraction"),
    (["client.val_fraction=0"], "client.val_fraction"),
    (["device=tpu"], "device"),
    (["seed=-1"], "seed"),
    (["strategy=fedprox", "strategy.proximal_mu=-1"], "strategy.proximal_mu"),
    (["partition=shard", "partition.num_shards_per_partition=0"], "partition.num_shards_per_partition"),
    (["partition.num_partitions=3"], "partition.num_partitions"),
    (["engine=flower", "engine.client_resources.num_cpus=0"], "engine.client_resources.num_cpus"),
    (["engine.workers=0"], "engine.workers"),
    (["engine.workers=many"], "engine.workers"),
    (["dataset=synthetic", "dataset.num_users=0"], "dataset.num_users"),
    (["dataset.test_fraction=1.0"], "dataset.test_fraction"),
    (["log_level=LOUD"], "log_level"),
    (["stragglers.fraction=1.0"], "stragglers.fraction"),
    (["strategy=feddisco", "strategy.measure=js"], "strategy.measure"),
    (["strategy=feddisco", "strategy.target=test"], "strategy.target"),
    (["strategy=feddisco", "strategy.a=-1"], "strategy.a"),
    (["strategy=fedlaw", "server.proxy_size=0"], "server.proxy_size"),
    (["strategy=fedlaw", "strategy.server_epochs=-1"], "strategy.server_epochs"),
    (["strategy=fedlaw", "strategy.server_lr=0"], "strategy.server_lr"),
    (["strategy=fedavg", "strategy.straggler_mode=slow"], "strategy.straggler_mode"),
    (["partition=quantity", "partition.distribution=zipf"], "partition.distribution"),
    (["partition=quantity", "partition.distribution=lognormal", "partition.sigma=0"], "partition.sigma"),
    (["partition=embedding", "partition.num_clusters=0"], "partition.num_clusters"),
    (["partition=embedding", "partition.by=pixel"], "partition.by"),
    (["partition=embedding", "partition.size_rule=exact"], "partition.size_rule"),
    (["partition=embedding", "partition.encoder=clip"], "partition.encoder"),
    (["partition=embedding", "partition.alpha=0"], "partition.alpha"),
    (["partition=semantic", "partition.pca_components=0"], "partition.pca_components"),
    (["partition=semantic", "partition.covariance_type=banded"], "partition.covariance_type"),
    (["strategy.min_train_nodes=11"], "strategy.min_train_nodes"),
    (["strategy.min_evaluate_nodes=-1"], "strategy.min_evaluate_nodes"),
    (["server.max_update_norm=-2"], "server.max_update_norm"),
    (["server.max_update_norm=median"], "server.max_update_norm"),
    (["server.update_norm_factor=0.5"], "server.update_norm_factor"),
    (["server.update_norm_factor=high"], "server.update_norm_factor"),
    (["server.min_valid_replies=20"], "server.min_valid_replies"),
    (["faults.nan_rate=2"], "faults.nan_rate"),
    (["faults.slow_rate=-0.1"], "faults.slow_rate"),
    (["client.local_debiasing=fairbatch"], "client.local_debiasing"),
    (["feature_noise.std=-1"], "feature_noise.std"),
    (["label_noise.rate=2"], "label_noise.rate"),
    (["exclude_clients=[0,1,2,3,4,5,6,7,8,9]"], "exclude_clients"),
    (["strategy=fairfed"], "dataset"),
    (["client.local_debiasing=reweighing"], "dataset"),
]


@pytest.mark.parametrize("overrides, key", BAD_VALUES)
def test_bad_values_name_their_key(overrides, key):
    with pytest.raises(ConfigError) as raised:
        validate(compose_experiment(overrides))
    assert raised.value.key == key
    message = str(raised.value)
    assert message.startswith(f"{key}=") and "\n" not in message


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


@pytest.mark.parametrize("args, expected", [(["partition.alpha=0"], "partition.alpha=0"), (["strategy=nope"], "strategy='nope'"),
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
