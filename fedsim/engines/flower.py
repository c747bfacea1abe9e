"""Flower's Simulation Runtime (Ray backend): each ClientApp call runs in a Ray actor with its own resources."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from typing import Any

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from .base import Engine


class _DropRunSimulationNotice(logging.Filter):
    """fedsim calls `run_simulation` on purpose (it keeps the ServerApp in this process); hide its deprecation notice."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "run_simulation` function is deprecated" not in record.getMessage()


class FlowerEngine(Engine):
    """Runs the ServerApp with `flwr.simulation.run_simulation`; `client_resources` sizes each actor."""

    name = "flower"

    def __init__(self, client_resources: Mapping[str, float], ray_init_args: Mapping[str, Any] | None = None) -> None:
        self.client_resources = {key: float(value) for key, value in client_resources.items()}
        self.ray_init_args = {"logging_level": "error", "log_to_driver": False, **(ray_init_args or {})}

    def run(self, server_app: ServerApp, client_app: ClientApp, num_nodes: int) -> None:
        from flwr.simulation import run_simulation  # imports Ray: only when this engine is chosen

        logging.getLogger("flwr").addFilter(_DropRunSimulationNotice())
        warnings.filterwarnings("ignore", message=".*Ray will no longer override accelerator", category=FutureWarning)
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=num_nodes,
            backend_config={"client_resources": self.client_resources, "init_args": self.ray_init_args},
        )
