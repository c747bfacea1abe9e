"""Byzantine clients (`fedsim.attacks`): what each attack sends, who attacks, how a config or a node names it, and
that an attacked run is the same on every engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Context, RecordDict

from fedsim.attacks import Attack, alie_z, attacked_data, attacked_update, attackers, configured_attack, parse_attack
from fedsim.config import compose_experiment, validate
from fedsim.data.tensors import ArrayDataset
from fedsim.errors import ConfigError
from fedsim.node_config import NodeConfigError, misbehavior

from .conftest import read_metrics

START = ArrayRecord({"w": Array(np.array([1.0, 2.0], dtype=np.float32)), "n": Array(np.array([4]))})
TRAINED = ArrayRecord({"w": Array(np.array([1.5, 1.0], dtype=np.float32)), "n": Array(np.array([5]))})  # Δ = (.5, -1)


def _sent(kind: str, estimates: list[ArrayRecord] | None = None, **settings: float) -> np.ndarray:
    attack = parse_attack(kind, settings)
    sent = attacked_update(attack, TRAINED, START, seed=0, server_round=1, partition_id=3,
                           estimates=estimates if estimates is not None else [TRAINED])
    assert sent["n"].numpy().tolist() == [5] and sent["w"].numpy().dtype == np.float32  # counters stay as trained
    return sent["w"].numpy()


@pytest.mark.parametrize("kind, settings, expected", [
    ("reverse", {}, [1 - 10 * 0.5, 2 + 10 * 1.0]),  # -10 Δ, the reference's factor
    ("reverse", {"scale": 2.0}, [1 - 2 * 0.5, 2 + 2 * 1.0]),
    ("scale", {}, [1 + 1000 * 0.5, 2 - 1000 * 1.0]),
    ("scale", {"scale": 10.0}, [6.0, -8.0]),
    ("sign-flip", {}, [0.5, 3.0]),
])
def test_update_attacks_send_what_their_equation_says(kind, settings, expected):
    np.testing.assert_allclose(_sent(kind, **settings), expected)


def test_random_sends_a_uniform_update_in_0_1_seeded_by_client_and_round():
    first, again = _sent("random"), _sent("random")
    np.testing.assert_array_equal(first, again)
    update = first - np.array([1.0, 2.0])
    assert ((update >= 0) & (update < 1)).all()
    other = attacked_update(parse_attack("random", {}), TRAINED, START, 0, 2, 3)["w"].numpy()
    assert not np.array_equal(other, first)


def test_alie_and_foe_use_the_mean_and_std_of_the_attackers_own_estimates():
    second = ArrayRecord({"w": Array(np.array([1.0, 3.0], dtype=np.float32)), "n": Array(np.array([5]))})  # Δ=(0, 1)
    estimates = [TRAINED, second]  # updates (0.5, -1) and (0, 1): mean (0.25, 0), sample std (0.3536, 1.4142)
    mean, std = np.array([0.25, 0.0]), np.array([np.sqrt(0.125), np.sqrt(2.0)])
    np.testing.assert_allclose(_sent("alie", estimates), np.array([1.0, 2.0]) + mean - 0.21 * std, rtol=1e-6)
    np.testing.assert_allclose(_sent("alie", estimates, z=1.5), np.array([1.0, 2.0]) + mean - 1.5 * std, rtol=1e-6)
    np.testing.assert_allclose(_sent("foe", estimates), np.array([1.0, 2.0]) - 0.1 * mean, rtol=1e-6)


def test_nan_sends_nan_weights():
    assert np.isnan(_sent("nan")).all()


def test_alie_z_max_is_baruch_et_als_value():
    # n = 50, f = 12: s = 26 - 12 = 14 supporters needed; z = Φ^-1((50 - 14) / 50) = Φ^-1(0.72) = 0.5828
    assert alie_z(50, 12) == pytest.approx(0.5828, abs=1e-4)
    assert parse_attack("alie", {"z": "auto"}, num_clients=50, num_attackers=12).z == pytest.approx(0.5828, abs=1e-4)


def test_label_flip_and_noisy_data_change_only_the_attackers_training_rows():
    data = ArrayDataset(torch.zeros(4, 3), torch.tensor([0, 1, 2, 9]), None)
    flipped = attacked_data(data, parse_attack("label-flip", {}), 10, seed=0, partition_id=1)
    assert flipped.y.tolist() == [9, 8, 7, 0] and torch.equal(flipped.x, data.x)
    noisy = attacked_data(data, parse_attack("noisy-data", {"noise_std": 2.0}), 10, 0, 1)
    assert torch.equal(noisy.y, data.y) and 0.5 < float(noisy.x.std()) < 4.0
    assert torch.equal(noisy.x, attacked_data(data, parse_attack("noisy-data", {"noise_std": 2.0}), 10, 0, 1).x)
    assert attacked_data(data, None, 10, 0, 1) is data
    assert attacked_data(data, parse_attack("reverse", {}), 10, 0, 1) is data


def test_attackers_are_the_named_clients_plus_a_seeded_fraction():
    experiment = compose_experiment(["num_clients=20", "attack.kind=random", "attack.clients=[4]",
                                     "attack.fraction=0.1"])
    chosen = attackers(experiment)
    assert 4 in chosen and len(chosen) in (2, 3) and chosen == attackers(experiment)
    assert chosen != attackers({**experiment, "seed": 1}) or len(chosen) == 3
    assert configured_attack(experiment, 4) == Attack("random", 1.0, 0.21, 0.1, max(2, len(chosen)), 1.0)
    assert configured_attack(experiment, next(p for p in range(20) if p not in chosen)) is None
    assert attackers(compose_experiment(["attack.clients=[1]"])) == frozenset()  # kind none: nobody (refused below)


@pytest.mark.parametrize("override, message", [
    ("attack.kind=lie", "attack.kind='lie'"),
    ("attack.clients=[12]", "attack.clients=[12]"),
    ("attack.fraction=1.0", "attack.fraction=1.0"),
    ("attack.z=-1", "attack.z=-1"),
    ("attack.scale=0", "attack.scale=0"),
    ("attack.estimates=1", "attack.estimates=1"),
])
def test_a_bad_attack_setting_is_refused_in_one_line(override, message):
    experiment = compose_experiment(["attack.kind=alie", "attack.clients=[0]", override])
    with pytest.raises(ConfigError) as refused:
        validate(experiment)
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)


def test_an_attack_without_attackers_or_attackers_without_an_attack_is_refused():
    with pytest.raises(ConfigError, match=r"^attack\.clients=\[\].*at least one attacker"):
        validate(compose_experiment(["attack.kind=random"]))
    with pytest.raises(ConfigError, match=r"^attack\.kind='none'"):
        validate(compose_experiment(["attack.clients=[1]"]))


@pytest.mark.parametrize("config, expected", [
    ({}, None),
    ({"misbehave": "scale"}, Attack("scale", 1000.0)),
    ({"misbehave": "scale", "misbehave-scale": 50}, Attack("scale", 50.0)),
    ({"misbehave": "reverse"}, Attack("reverse", 10.0)),
    ({"misbehave": "alie", "misbehave-z": 1.0, "misbehave-estimates": 3}, Attack("alie", 1.0, 1.0, 0.1, 3)),
    ({"misbehave": "noisy-data", "misbehave-noise-std": 0.5}, Attack("noisy-data", 1.0, noise_std=0.5)),
    ({"misbehave": "lie"}, "--node-config misbehave='lie': one of random, reverse, alie, foe, scale, sign-flip, nan, "
                           "label-flip, noisy-data"),
    ({"misbehave": "scale", "misbehave-scale": 0}, "--node-config misbehave-scale=0: a number > 0 or one of auto"),
    ({"misbehave": "scale", "misbehave-scale": "big"},
     "--node-config misbehave-scale='big': a number > 0 or one of auto"),
    ({"misbehave": "noisy-data", "misbehave-noise-std": -1}, "--node-config misbehave-noise-std=-1: a number > 0"),
])
def test_a_nodes_misbehave_is_read_from_its_node_config(config, expected):
    context = Context(run_id=1, node_id=5, node_config={"partition-id": 0, **config}, state=RecordDict(), run_config={})
    if isinstance(expected, str):
        with pytest.raises(NodeConfigError) as raised:
            misbehavior(context)
        assert str(raised.value) == expected
    else:
        assert misbehavior(context) == expected


ATTACKED = ["num_clients=5", "num_rounds=3", "client.local_epochs=1", "server.max_update_norm=null"]


@pytest.mark.parametrize("attack", ["attack.kind=label-flip", "attack.kind=alie"])
def test_an_attacked_run_is_the_same_on_the_in_process_and_vectorized_engines(run_quietly, attack):
    overrides = [*ATTACKED, attack, "attack.clients=[1,3]"]
    _, inprocess = run_quietly(*overrides, name="inprocess")
    _, vectorized = run_quietly(*overrides, "engine=vectorized", name="vectorized")
    rows, others = read_metrics(inprocess), read_metrics(vectorized)
    assert [r["test_accuracy"] for r in rows] == [r["test_accuracy"] for r in others]


def test_reverse_attackers_break_fedavg(run_quietly):
    _, clean = run_quietly(*ATTACKED, name="clean")
    _, attacked = run_quietly(*ATTACKED, "attack.kind=reverse", "attack.clients=[0,1]", name="attacked")
    assert float(read_metrics(attacked)[-1]["test_accuracy"]) < float(read_metrics(clean)[-1]["test_accuracy"]) - 0.3
