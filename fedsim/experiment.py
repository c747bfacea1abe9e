"""The experiment config as it travels to clients, and what clients and server build from it.

The server sends the resolved experiment config as JSON in every train/evaluate ConfigRecord, so a client needs no
config of its own: the same ClientApp serves the in-process engine, Flower's runtime and deployment.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from flwr.app import ConfigRecord
from torch import nn

from .training import TrainSettings

if TYPE_CHECKING:
    from .data.base import LoadedData

CONFIG_KEY = "fedsim-config"
# Keys a strategy may put in the train ConfigRecord to change a client's local work this round.
PROXIMAL_MU_KEY = "proximal-mu"
LOCAL_EPOCHS_KEY = "local-epochs"
LR_KEY = "lr"
MOMENTUM_KEY = "momentum"
# A strategy sets this to have each client evaluate the received model on its whole training set before training
# (q-FFL's F_k(w^t)); the reply's metrics then carry `pretrain_loss` and `pretrain_accuracy`.
PRETRAIN_EVAL_KEY = "pretrain-eval"
ROUND_KEY = "server-round"
# A strategy config's block naming the client optimiser of its paper's reference code (`momentum`, `weight_decay`);
# it takes precedence over `client.momentum` / `client.weight_decay`. The server removes it before building the
# strategy, and clients read it from the experiment they receive.
CLIENT_OPTIMIZER_KEY = "client_optimizer"
CLIENT_OPTIMIZER_FIELDS = ("momentum", "weight_decay")
# Strategies that send a momentum in every train ConfigRecord whatever the config says (q-FFL: its Delta w / eta
# gradient estimate holds for plain SGD only).
_SENT_MOMENTUM = {"fedsim.strategies.QFFL": 0.0}


def experiment_record(experiment: Mapping[str, Any]) -> ConfigRecord:
    """A fresh ConfigRecord carrying the experiment (strategies add their own keys to it)."""
    return ConfigRecord({CONFIG_KEY: json.dumps(experiment, sort_keys=True, default=str)})


@lru_cache(maxsize=8)
def _parse(text: str) -> dict[str, Any]:
    return json.loads(text)


def experiment_from_record(record: ConfigRecord) -> dict[str, Any]:
    if CONFIG_KEY not in record:
        raise KeyError(f"the message's ConfigRecord has no '{CONFIG_KEY}': it was not sent by a fedsim ServerApp")
    return _parse(str(record[CONFIG_KEY]))


def client_optimizer(experiment: Mapping[str, Any]) -> dict[str, Any]:
    """The optimiser the clients run under this experiment's strategy (before any per-round key a strategy sends).

    Clients always run PyTorch SGD at `client.lr` (the papers tune the learning rate per data set). Momentum and
    weight decay come from the strategy config's `client_optimizer` block where its paper's reference code names
    them (source "paper"), else from `client.momentum` and `client.weight_decay` (source "fedsim default").
    """
    client = experiment["client"]
    strategy = experiment.get("strategy") or {}
    paper = strategy.get(CLIENT_OPTIMIZER_KEY) or {}
    momentum = float(paper.get("momentum", client["momentum"]))
    weight_decay = float(paper.get("weight_decay", client["weight_decay"]))
    target = str(strategy.get("_target_", ""))
    if target in _SENT_MOMENTUM:
        momentum = _SENT_MOMENTUM[target]
    return {"name": "SGD", "lr": float(client["lr"]), "momentum": momentum, "weight_decay": weight_decay,
            "source": "paper" if paper else "fedsim default"}


def train_settings(experiment: Mapping[str, Any], record: ConfigRecord) -> TrainSettings:
    """The local-training settings: the config's, the strategy's client optimiser, then its per-round keys."""
    client = experiment["client"]
    optimizer = client_optimizer(experiment)
    return TrainSettings(
        epochs=int(record.get(LOCAL_EPOCHS_KEY, client["local_epochs"])),
        batch_size=int(client["batch_size"]),
        lr=float(record.get(LR_KEY, client["lr"])),
        momentum=float(record.get(MOMENTUM_KEY, optimizer["momentum"])),
        weight_decay=optimizer["weight_decay"],
        proximal_mu=float(record.get(PROXIMAL_MU_KEY, client["proximal_mu"])),
    )


def strategy_arguments(strategy: Mapping[str, Any]) -> dict[str, Any]:
    """The strategy config without the keys meant for clients (what `hydra.utils.instantiate` gets)."""
    return {key: value for key, value in strategy.items() if key != CLIENT_OPTIMIZER_KEY}


def build_model(experiment: Mapping[str, Any], data: LoadedData) -> nn.Module:
    """Instantiate the `model` config group entry for this data set's input shape and class count."""
    import hydra.utils  # imported here: Hydra and OmegaConf would weigh on every ClientApp start

    return hydra.utils.instantiate(
        dict(experiment["model"]), input_shape=list(data.input_shape), num_classes=data.num_classes
    )
