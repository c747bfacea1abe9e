"""The engine interface: turn "run this ServerApp against N nodes running this ClientApp" into a finished run.

Engines know nothing of strategies; they only deliver Flower Messages to the ClientApp and replies back.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp
from torch import nn


class Engine(ABC):
    """Runs a ServerApp against `num_nodes` simulated nodes, node i holding partition i.

    `engine._target_` names the class; the entry's other keys but `name` (the run's label for it) are its
    constructor's arguments. Configuration validation reads the class's declarations first: `_parameter_constraints`
    (`fedsim.protocol.constraints`) and, for rules across arguments, a `check_arguments` classmethod.
    """

    name: str = "engine"

    @classmethod
    def from_config(cls, arguments: Mapping[str, Any], device: str = "auto",  # pylint: disable=unused-argument
                    model: Callable[[], nn.Module] | None = None) -> Engine:
        """The engine the config's arguments describe. The experiment's `device` and `model` (a builder of its
        model) are offered for settings that depend on them; this default needs neither."""
        return cls(**arguments)

    @classmethod
    def check_resources(cls, arguments: Mapping[str, Any]) -> None:
        """Before any data loads, raise a FedsimError if the machines cannot run this engine as configured.

        A hook: this default accepts every configuration; engines that need particular resources override it."""
        return None

    @abstractmethod
    def run(self, server_app: ServerApp, client_app: ClientApp, num_nodes: int) -> None:
        """Run the ServerApp to completion."""
