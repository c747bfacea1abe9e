"""The same seed gives the same metrics on every engine (float tolerance only)."""

from __future__ import annotations

from numbers import Integral

import pytest
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fedsim.config import compose_experiment, group_options, validate
from fedsim.engines import Engine, FlowerEngine, InProcessEngine, make_engine
from fedsim.errors import ConfigError
from fedsim.protocol.constraints import Interval

from .conftest import data_for, read_metrics


class PatientEngine(Engine):
    """An engine config.py has never heard of, declaring what its one argument may be."""

    _parameter_constraints = {"patience": [Interval(Integral, 1, None, closed="left")]}

    def __init__(self, patience: int = 1) -> None:
        self.patience = patience

    def run(self, server_app: ServerApp, client_app: ClientApp, num_nodes: int) -> None:
        raise NotImplementedError


def test_make_engine_builds_the_configured_class():
    engine = make_engine({"_target_": "fedsim.engines.InProcessEngine", "name": "inprocess", "workers": 3})
    assert isinstance(engine, InProcessEngine) and engine.workers == 3
    engine = make_engine({"_target_": "fedsim.engines.FlowerEngine", "name": "flower",
                          "client_resources": {"num_cpus": 1, "num_gpus": 0.5}})
    assert isinstance(engine, FlowerEngine) and engine.client_resources == {"num_cpus": 1.0, "num_gpus": 0.5}
    engine = make_engine({"_target_": f"{__name__}.PatientEngine", "name": "patient", "patience": 4}, device="cpu")
    assert isinstance(engine, PatientEngine) and engine.patience == 4  # the device is offered, not imposed


def test_an_engines_declared_constraints_are_checked():
    patient = ["engine=inprocess", f"engine._target_={__name__}.PatientEngine", "~engine.workers"]
    validate(compose_experiment([*patient, "+engine.patience=2"]))
    with pytest.raises(ConfigError) as raised:
        validate(compose_experiment([*patient, "+engine.patience=0"]))
    assert str(raised.value) == "engine.patience=0 is not allowed: an integer >= 1"


@pytest.mark.ray
def test_inprocess_and_flower_runtime_agree(run_quietly):
    overrides = ("num_rounds=3", "num_clients=6", "fraction_train=0.5", "seed=11")
    local, local_dir = run_quietly(*overrides, "engine=inprocess", name="inprocess")
    ray, ray_dir = run_quietly(*overrides, "engine=flower", name="flower")
    local_rows, ray_rows = read_metrics(local_dir), read_metrics(ray_dir)
    assert [r["sampled"] for r in local_rows] == [r["sampled"] for r in ray_rows]  # same clients each round
    for a, b in zip(local_rows, ray_rows, strict=True):
        assert float(a["test_loss"]) == pytest.approx(float(b["test_loss"]), rel=1e-5)
        assert float(a["test_accuracy"]) == pytest.approx(float(b["test_accuracy"]), abs=1e-9)
        if a["train_loss"]:
            assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), rel=1e-5)
    assert local["client_accuracy"]["mean"] == pytest.approx(ray["client_accuracy"]["mean"], rel=1e-6)


@pytest.mark.ray
def test_compressed_updates_are_the_same_on_flowers_runtime(run_quietly):
    """FedZip-encoded replies through Flower's Ray runtime decode to the in-process run's models; the uplink is the
    same size up to the message heads (Ray's node ids are other numbers)."""
    overrides = ("num_rounds=2", "num_clients=4", "seed=3", "compression=fedzip", "compression.error_feedback=true")
    _, local_dir = run_quietly(*overrides, "engine=inprocess", name="inprocess")
    _, ray_dir = run_quietly(*overrides, "engine=flower", name="flower")
    for a, b in zip(read_metrics(local_dir), read_metrics(ray_dir), strict=True):
        assert float(a["test_loss"]) == pytest.approx(float(b["test_loss"]), rel=1e-5)
        if a["round"] != "0":  # (round 0: node discovery's few hundred bytes, where heads are most of it)
            assert int(a["bytes_up"]) == pytest.approx(int(b["bytes_up"]), rel=0.02)
        assert a["rejected"] == b["rejected"] == "0"


# What each strategy is exercised with on both engines: its client state, stragglers and the steps it adds.
EXERCISED_WITH = {
    "fedprox": ("strategy.proximal_mu=0.5", "stragglers.fraction=0.5"),
    "feddisco": ("stragglers.fraction=0.5",),
    "fedlaw": ("strategy.server_epochs=2",),
    "fedce": ("num_rounds=3",),  # clients keep state (last local model, running mean) across rounds
    "fairfed": ("partition.partition_by=sensitive",),
}


@pytest.mark.ray
@pytest.mark.parametrize("name", group_options("strategy"))
def test_every_strategy_runs_the_same_on_both_engines(run_quietly, name):
    overrides = ("num_rounds=2", "num_clients=4", "seed=2", "client.local_epochs=2", f"strategy={name}",
                 *data_for(name), *EXERCISED_WITH.get(name, ()))
    local, local_dir = run_quietly(*overrides, "engine=inprocess", name="inprocess")
    ray, ray_dir = run_quietly(*overrides, "engine=flower", name="flower")
    local_rows, ray_rows = read_metrics(local_dir), read_metrics(ray_dir)
    weight_columns = [c for c in local_rows[1]
                      if c.startswith("weight_client_") or c in ("gamma", "stragglers", "qffl_step", "test_eod")]
    assert weight_columns, "the strategy's round report reaches metrics.csv"
    for a, b in zip(local_rows, ray_rows, strict=True):
        assert a["sampled"] == b["sampled"]
        assert float(a["test_loss"]) == pytest.approx(float(b["test_loss"]), rel=1e-5)
        for column in weight_columns:
            if a[column]:
                assert float(a[column]) == pytest.approx(float(b[column]), rel=1e-5, abs=1e-7)
