"""The engine interface: turn "run this ServerApp against N nodes running this ClientApp" into a finished run.

Engines know nothing of strategies; they only deliver Flower Messages to the ClientApp and replies back.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp


class Engine(ABC):
    """Runs a ServerApp against `num_nodes` simulated nodes, node i holding partition i."""

    name: str = "engine"

    @abstractmethod
    def run(self, server_app: ServerApp, client_app: ClientApp, num_nodes: int) -> None:
        """Run the ServerApp to completion."""
