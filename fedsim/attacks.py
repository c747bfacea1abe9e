"""Byzantine clients for robustness experiments: which clients attack, and what an attacker sends.

An attacker is chosen by the experiment (`attack.clients`, or a seeded `attack.fraction` of the federation) or, in a
deployment, by its own `--node-config misbehave=KIND` (`fedsim.node_config`). Two families, as in the Flag
Aggregator's reference code (Almasi et al., ICLR 2024), written for FL: the attacker's update is
Δ = w_k − w_global, and it replies w_global + Δ' for the attacked Δ'.

Update attacks (the attacker trains, then replaces Δ):
- `random`: Δ' ~ U[0, 1) per value, all positive, so several attackers send nearly collinear vectors;
- `reverse`: Δ' = −s·Δ (s = 10 in the reference);
- `alie` ("A Little Is Enough", Baruch et al., NeurIPS 2019): Δ' = μ − z·σ over `estimates` honest updates the
  attacker computes itself on different batches (the reference's simulated colluders); z = 0.21 as released, or
  `auto`: z_max = Φ⁻¹((n − s)/n), s = ⌊n/2 + 1⌋ − f, the paper's value for n clients and f attackers;
- `foe` ("Fall of Empires", Xie et al., UAI 2019): Δ' = −ε·μ over the same estimates (ε = 0.1 in the reference);
- `scale`: Δ' = s·Δ (s = 1000), the model-replacement boost; `sign-flip`: Δ' = −Δ; `nan`: every float NaN.

Data attacks (the attacker trains honestly on bad training rows; its validation rows stay clean):
- `label-flip`: every training label y becomes C − 1 − y;
- `noisy-data`: N(0, std²) added to every training input (the reference's "augmented data" workers).

Every draw is seeded by (seed, round, partition id), so an attacked run is as reproducible as a clean one.
Deviation: with a single estimate σ is undefined (the reference's `torch.std` gives NaN), so `estimates` is at least 2.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from statistics import NormalDist
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from .data.tensors import ArrayDataset
from .protocol.constraints import Interval, InvalidParameter, Options

UPDATE_ATTACKS = ("random", "reverse", "alie", "foe", "scale", "sign-flip", "nan")
DATA_ATTACKS = ("label-flip", "noisy-data")
KINDS = UPDATE_ATTACKS + DATA_ATTACKS
DEFAULT_SCALE = {"reverse": 10.0, "scale": 1000.0}
_CHOICE_SALT, _UPDATE_SALT, _DATA_SALT = 6007, 7727, 9973

POSITIVE = Interval(Real, 0, None, closed="neither")
_SETTINGS = {  # name -> (default, constraints): the same for `attack.<name>` and `--node-config misbehave-<name>`
    "scale": ("auto", [POSITIVE, Options({"auto"})]),
    "z": (0.21, [Interval(Real, 0, None, closed="left"), Options({"auto"})]),
    "epsilon": (0.1, [Interval(Real, 0, None, closed="left")]),
    "estimates": ("auto", [Interval(Integral, 2, None, closed="left"), Options({"auto"})]),
    "noise_std": (1.0, [POSITIVE]),
}
SETTINGS = tuple(_SETTINGS)


@dataclass(frozen=True)
class Attack:
    """What one attacker does: its `kind` (one of `KINDS`) and that kind's settings, resolved."""

    kind: str
    scale: float = 1.0  # s of `reverse` and `scale`
    z: float = 0.21
    epsilon: float = 0.1
    estimates: int = 2  # honest updates behind ALIE's and FoE's mean and standard deviation
    noise_std: float = 1.0

    @property
    def on_data(self) -> bool:
        return self.kind in DATA_ATTACKS


def parse_attack(kind: Any, settings: Mapping[str, Any], num_clients: int = 0, num_attackers: int = 1) -> Attack:
    """The attack `kind` with `settings` (missing ones at their defaults). `auto` values need the federation's size
    and the number of attackers (ALIE's z_max; the estimates: as many as attackers, the reference's simulated
    colluders). Raises `InvalidParameter` naming the first bad setting."""
    if kind not in KINDS:
        raise InvalidParameter("kind", kind, f"one of {', '.join(KINDS)}")
    values = {}
    for name, (default, constraints) in _SETTINGS.items():
        value = settings.get(name, default)
        if not any(constraint.allows(value) for constraint in constraints):
            raise InvalidParameter(name, value, " or ".join(str(constraint) for constraint in constraints))
        values[name] = value
    if values["scale"] == "auto":
        values["scale"] = DEFAULT_SCALE.get(kind, 1.0)
    if values["z"] == "auto":
        values["z"] = alie_z(max(num_clients, 2), num_attackers)
    if values["estimates"] == "auto":
        values["estimates"] = max(2, num_attackers)
    return Attack(str(kind), float(values["scale"]), float(values["z"]), float(values["epsilon"]),
                  int(values["estimates"]), float(values["noise_std"]))


def alie_z(num_clients: int, num_attackers: int) -> float:
    """Baruch et al.'s z_max for n clients and f attackers: Φ⁻¹((n − s)/n), s = ⌊n/2 + 1⌋ − f supporters needed."""
    supporters = num_clients // 2 + 1 - num_attackers
    share = (num_clients - supporters) / num_clients
    return float(NormalDist().inv_cdf(min(max(share, 1e-6), 1 - 1e-6)))


def attackers(experiment: Mapping[str, Any]) -> frozenset[int]:
    """The partition ids the experiment makes attackers: `attack.clients`, plus round(fraction · N) drawn with the
    seed (the same clients every round)."""
    config = experiment.get("attack") or {}
    if str(config.get("kind", "none")) == "none":
        return frozenset()
    chosen = {int(pid) for pid in config.get("clients") or []}
    fraction = float(config.get("fraction", 0.0))
    if fraction > 0:
        num_clients = int(experiment["num_clients"])
        rng = np.random.default_rng([int(experiment["seed"]), _CHOICE_SALT])
        chosen |= {int(pid) for pid in rng.choice(num_clients, size=round(fraction * num_clients), replace=False)}
    return frozenset(chosen)


def configured_attack(experiment: Mapping[str, Any], partition_id: int) -> Attack | None:
    """This partition's attack under the experiment's `attack` config, or None for an honest client."""
    chosen = attackers(experiment)
    if partition_id not in chosen:
        return None
    config = dict(experiment["attack"])
    return parse_attack(config.pop("kind"), config, int(experiment["num_clients"]), len(chosen))


def attacked_data(data: ArrayDataset, attack: Attack | None, num_classes: int, seed: int,
                  partition_id: int) -> ArrayDataset:
    """The training rows a data attacker trains on (`data` itself for anyone else)."""
    if attack is None or not attack.on_data or len(data) == 0:
        return data
    if attack.kind == "label-flip":
        return ArrayDataset(data.x, (num_classes - 1 - data.y).to(data.y.dtype), data.sensitive)
    generator = torch.Generator().manual_seed(_stream(seed, partition_id, _DATA_SALT))
    noisy = data.x + attack.noise_std * torch.randn(data.x.shape, generator=generator, dtype=data.x.dtype)
    return ArrayDataset(noisy, data.y, data.sensitive)


def attacked_update(attack: Attack, trained: ArrayRecord, start: ArrayRecord, seed: int, server_round: int,
                    partition_id: int, estimates: Sequence[ArrayRecord] = ()) -> ArrayRecord:
    """What an update attacker sends instead of its trained model `trained` (received model: `start`).

    `estimates` are the honest models behind ALIE and FoE (the trained one among them). Integer arrays (BatchNorm's
    counters) stay as trained."""
    rng = np.random.default_rng([seed, server_round, partition_id, _UPDATE_SALT])
    out = {}
    for key, array in trained.items():
        values = array.numpy()
        if not np.issubdtype(values.dtype, np.floating):
            out[key] = Array(values)
            continue
        origin = start[key].numpy().astype(np.float64)
        update = _attacked(attack, values.astype(np.float64) - origin, rng,
                           [record[key].numpy().astype(np.float64) - origin for record in estimates])
        out[key] = Array((origin + update).astype(values.dtype))
    return ArrayRecord(out)


def _attacked(attack: Attack, update: np.ndarray, rng: np.random.Generator,
              estimates: list[np.ndarray]) -> np.ndarray:
    if attack.kind == "random":
        return rng.random(update.shape)
    if attack.kind == "nan":
        return np.full(update.shape, np.nan)
    if attack.kind in ("alie", "foe"):
        stacked = np.stack(estimates or [update])
        mean = stacked.mean(axis=0)
        if attack.kind == "foe":
            return -attack.epsilon * mean
        spread = stacked.std(axis=0, ddof=1) if len(stacked) > 1 else np.zeros_like(mean)
        return mean - attack.z * spread
    factor = {"reverse": -attack.scale, "scale": attack.scale, "sign-flip": -1.0}[attack.kind]
    return factor * update


def _stream(*words: int) -> int:
    return int(np.random.SeedSequence(list(words)).generate_state(1)[0])
