"""What the server and the clients build from an experiment: its classes, the model, the clients' local settings.

The experiment travels in every message (`fedsim.protocol.experiment`), so a client builds the same model and the
same training settings as the server would, on every engine and in deployment.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from .protocol.capabilities import StrategyTraits, strategy_traits
from .protocol.keys import CLIENT_OPTIMIZER_KEY, LOCAL_EPOCHS_KEY, LR_KEY, MOMENTUM_KEY, PROXIMAL_MU_KEY
from .training import TrainSettings

if TYPE_CHECKING:
    from flwr.app import ConfigRecord

    from .data.base import LoadedData


def locate(dotted: str) -> Any:
    """The object a dotted path names (`package.module.Class` or `package.Class`), imported with importlib alone:
    the ClientApp resolves the strategy with it without loading Hydra."""
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            found = getattr(found, part)
        return found
    raise ImportError(dotted)


def traits_of(experiment: Mapping[str, Any]) -> StrategyTraits:
    """The declarations of the experiment's strategy class (`fedsim.protocol.capabilities`)."""
    return strategy_traits(locate(str(experiment["strategy"]["_target_"])))


def _configured_optimizer(experiment: Mapping[str, Any]) -> tuple[float, float, bool]:
    """(momentum, weight decay, from the paper's block?) before any per-round key a strategy sends."""
    client = experiment["client"]
    paper = (experiment.get("strategy") or {}).get(CLIENT_OPTIMIZER_KEY) or {}
    momentum = float(paper.get("momentum", client["momentum"]))
    return momentum, float(paper.get("weight_decay", client["weight_decay"])), bool(paper)


def client_optimizer(experiment: Mapping[str, Any]) -> dict[str, Any]:
    """The optimiser the clients run under this experiment's strategy.

    Clients always run PyTorch SGD at `client.lr` (the papers tune the learning rate per data set). Momentum and
    weight decay come from the strategy config's `client_optimizer` block where its paper's reference code names
    them (source "paper"), else from `client.momentum` and `client.weight_decay` (source "fedsim default"); a
    momentum the strategy class sends every round (`client_settings`, q-FFL's 0) wins over both.
    """
    momentum, weight_decay, from_paper = _configured_optimizer(experiment)
    momentum = float(traits_of(experiment).client_settings.get(MOMENTUM_KEY, momentum))
    return {"name": "SGD", "lr": float(experiment["client"]["lr"]), "momentum": momentum, "weight_decay": weight_decay,
            "source": "paper" if from_paper else "fedsim default"}


def train_settings(experiment: Mapping[str, Any], record: ConfigRecord) -> TrainSettings:
    """The local-training settings: the config's, the strategy's client optimiser, then its per-round keys."""
    client = experiment["client"]
    momentum, weight_decay, _ = _configured_optimizer(experiment)
    return TrainSettings(
        epochs=int(record.get(LOCAL_EPOCHS_KEY, client["local_epochs"])),
        batch_size=int(client["batch_size"]),
        lr=float(record.get(LR_KEY, client["lr"])),
        momentum=float(record.get(MOMENTUM_KEY, momentum)),
        weight_decay=weight_decay,
        proximal_mu=float(record.get(PROXIMAL_MU_KEY, client["proximal_mu"])),
    )


def strategy_arguments(strategy: Mapping[str, Any]) -> dict[str, Any]:
    """The strategy config without the keys meant for clients (what `hydra.utils.instantiate` gets)."""
    return {key: value for key, value in strategy.items() if key != CLIENT_OPTIMIZER_KEY}


def saved_model(path: str | Path, experiment: Mapping[str, Any]) -> nn.Module:
    """A model the recorder saved (a run folder's `model.pt` or `models/client_<i>.pt`), rebuilt from the shape and
    class count its `__fedsim__` entry records, on the CPU and in eval mode."""
    import hydra.utils
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    meta = state.pop("__fedsim__")
    model = hydra.utils.instantiate(dict(experiment["model"]), input_shape=list(meta["input_shape"]),
                                    num_classes=int(meta["num_classes"]))
    model.load_state_dict(state)
    return model.eval()


def build_model(experiment: Mapping[str, Any], data: LoadedData) -> nn.Module:
    """Instantiate the `model` config group entry for this data set's input shape and class count."""
    import hydra.utils  # imported here: Hydra and OmegaConf would weigh on every ClientApp start

    return hydra.utils.instantiate(
        dict(experiment["model"]), input_shape=list(data.input_shape), num_classes=data.num_classes
    )
