"""Flower's Simulation Runtime (Ray backend): each ClientApp call runs in a Ray actor with its own resources, on a Ray
started on this machine or on a running Ray cluster (`engine.address`)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from typing import Any

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from .base import Engine
from .ray_resources import check_client_resources, client_request, validate_flower_engine


class _DropRunSimulationNotice(logging.Filter):
    """fedsim calls `run_simulation` on purpose (see FlowerEngine); hide its deprecation notice."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "run_simulation` function is deprecated" not in record.getMessage()


class FlowerEngine(Engine):
    """Runs the ServerApp with `flwr.simulation.run_simulation`; `client_resources` sizes each actor.

    Flower 1.41 deprecates `run_simulation` for `flwr run`, but `flwr run` hands the app to a SuperLink whose
    `flwr-simulation` process loads the ServerApp from a FAB by name: fedsim's ServerApp object (its recorder, its
    outcome) would not run in this process. `run_simulation` keeps it here, so fedsim keeps it.

    `address` None starts Ray on this machine (`ray.init(address="local")`, even when RAY_ADDRESS is set); "auto",
    "host:port" or "ray://host:port" joins that running cluster. `fedsim.engines.ray_resources` checks the request
    against the nodes before the run.
    """

    name = "flower"

    @classmethod
    def check_arguments(cls, arguments: Mapping[str, Any]) -> None:
        """`client_resources`, `address` and `ray_init_args`, each and together
        (`ray_resources.validate_flower_engine`)."""
        validate_flower_engine(arguments)

    @classmethod
    def check_resources(cls, arguments: Mapping[str, Any]) -> None:
        """A request no Ray node can hold fails here, in one line, instead of a ServerApp waiting for nodes."""
        check_client_resources(arguments)

    def __init__(self, client_resources: Mapping[str, float], ray_init_args: Mapping[str, Any] | None = None,
                 address: str | None = None) -> None:
        self.client_resources = client_request({"client_resources": client_resources})
        self.address = address
        self.ray_init_args = {"logging_level": "error", "log_to_driver": False, **(ray_init_args or {}),
                              "address": address or "local"}

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
