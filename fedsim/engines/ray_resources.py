"""Does `engine=flower`'s `client_resources` fit the Ray cluster it will run on? Asked before any data is loaded.

Flower sizes its actor pool node by node (floor(node CPUs / num_cpus), the same for GPUs). When no node can hold one
client it logs "ActorPool is empty" while fedsim's ServerApp goes on waiting for nodes that never come (10 minutes,
then a long traceback). fedsim asks the same question first and answers in one line: the key, the value asked for
and what the nodes have. A local Ray (`engine.address: null`) is this machine, counted as Ray counts it; a cluster is
asked through a short connection that is closed again before the run.
"""

from __future__ import annotations

import math
import re
import socket
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import FedsimError, first_line
from ..protocol.constraints import InvalidParameter

RESOURCE_NAMES = {"num_cpus": "CPU", "num_gpus": "GPU"}  # client_resources key -> Ray's resource name
DEFAULT_CLIENT_RESOURCES = {"num_cpus": 1.0, "num_gpus": 0.0}
# ray.init refuses these when it joins a running cluster: the cluster's nodes declare their own resources
JOIN_REFUSES = ("num_cpus", "num_gpus", "resources", "labels", "object_store_memory", "_system_config")
RAY_UNIT = 1e-4  # Ray's smallest fraction of a resource
CONNECT_TIMEOUT_S = 5.0
_HOST_PORT = re.compile(r"^(?:ray://)?(?P<host>\[[0-9A-Fa-f:.]+\]|[^:/\s\[\]]+):(?P<port>\d{1,5})$")
ADDRESS_ALLOWED = "null (start Ray on this machine), auto (the cluster `ray start` or RAY_ADDRESS names), host:port or ray://host:port"


def _quantity(key: str, value: Any, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidParameter(key, value, "a number")
    if value < 0 or (positive and value == 0):
        raise InvalidParameter(key, value, "a number > 0" if positive else "a number >= 0")
    if 0 < value < RAY_UNIT:
        raise InvalidParameter(key, value, f"0 or at least {RAY_UNIT:g} (Ray's smallest share of a resource)")
    return float(value)


def validate_flower_engine(arguments: Mapping[str, Any]) -> None:
    """Types and ranges of `client_resources`, `address` and `ray_init_args` (no Ray needed); an `InvalidParameter`
    names the first bad one relative to the `engine` entry (`client_resources.num_cpus`)."""
    resources = arguments.get("client_resources") or {}
    if not isinstance(resources, Mapping):
        raise InvalidParameter("client_resources", resources, "a mapping such as {num_cpus: 1, num_gpus: 0.0}")
    for key, value in resources.items():
        if key not in RESOURCE_NAMES:
            raise InvalidParameter(f"client_resources.{key}", value,
                                   "Flower's Ray backend reserves num_cpus and num_gpus only")
        _quantity(f"client_resources.{key}", value, positive=key == "num_cpus")
    address = arguments.get("address")
    if address is not None and (not isinstance(address, str) or (address != "auto" and not _HOST_PORT.match(address))):
        raise InvalidParameter("address", address, ADDRESS_ALLOWED)
    if address is not None and address != "auto" and not 0 < int(_HOST_PORT.match(address)["port"]) < 65536:
        raise InvalidParameter("address", address, "a port between 1 and 65535")
    init_args = arguments.get("ray_init_args") or {}
    if not isinstance(init_args, Mapping):
        raise InvalidParameter("ray_init_args", init_args, "a mapping of ray.init keyword arguments")
    if "address" in init_args:
        raise InvalidParameter("ray_init_args.address", init_args["address"], "set engine.address instead")
    for key in JOIN_REFUSES:
        if address is not None and init_args.get(key) is not None:
            raise InvalidParameter(f"ray_init_args.{key}", init_args[key],
                                   f"not while joining a cluster (engine.address={address}): "
                                   "its nodes declare their resources")
    for key in ("num_cpus", "num_gpus"):
        if init_args.get(key) is not None:
            _quantity(f"ray_init_args.{key}", init_args[key], positive=False)


def client_request(engine: Mapping[str, Any]) -> dict[str, float]:
    """What each ClientApp actor reserves: the config's `client_resources` over Flower's keys' defaults."""
    given = engine.get("client_resources") or {}
    return {**DEFAULT_CLIENT_RESOURCES, **{key: float(value) for key, value in given.items()}}


def clients_per_node(request: Mapping[str, float], node: Mapping[str, float]) -> int:
    """How many actors of `request` one node holds; the rule of Flower's `pool_size_from_resources`."""
    counts = [math.floor(node.get(RESOURCE_NAMES[key], 0.0) / need + 1e-9) for key, need in request.items() if need > 0]
    return min(counts) if counts else 0


def local_node(init_args: Mapping[str, Any]) -> dict[str, float]:
    """The resources a Ray started on this machine declares: `ray_init_args` if given, else what Ray detects."""
    cpus, gpus = init_args.get("num_cpus"), init_args.get("num_gpus")
    if cpus is None or gpus is None:
        try:  # Ray's own detection: cgroup CPU quotas, CUDA_VISIBLE_DEVICES (private helpers, hence the fallback)
            from ray._private.accelerators import get_accelerator_manager_for_resource
            from ray._private.utils import get_num_cpus

            detected_cpus = float(get_num_cpus(override_docker_cpu_warning=True))
            detected_gpus = float(get_accelerator_manager_for_resource("GPU").get_current_node_num_accelerators())
        except Exception:  # noqa: BLE001 - fall back on the operating system's and PyTorch's counts
            import os

            import torch

            detected_cpus = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                  else os.cpu_count() or 1)
            detected_gpus = float(torch.cuda.device_count())
        cpus = detected_cpus if cpus is None else cpus
        gpus = detected_gpus if gpus is None else gpus
    return {"CPU": float(cpus), "GPU": float(gpus)}


def _reachable(address: str) -> None:
    """Fail fast where nothing listens: ray.init would retry a dead address for minutes."""
    match = _HOST_PORT.match(address)
    if match is None:  # "auto": Ray finds the address itself and fails at once when there is none
        return
    host, port = match["host"].strip("[]"), int(match["port"])
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        hint = ("a Ray client server (ray start --head --ray-client-server-port" if address.startswith("ray://")
                else "a Ray head (ray start --head --port")
        raise FedsimError(f"engine.address={address}: nothing answers at {host}:{port} ({error.strerror or error}); "
                          f"start {hint} {port}) there, or check the address and the firewall") from None


def cluster_nodes(address: str) -> list[dict[str, float]]:
    """The resources of each live node of the Ray cluster at `address`, read through a connection closed again."""
    import ray

    def live_nodes() -> list[dict[str, float]]:
        return [dict(node["Resources"]) for node in ray.nodes() if node.get("Alive") and node.get("Resources")]

    if ray.is_initialized():  # this process already talks to a Ray; Flower will run on that one
        return live_nodes()
    _reachable(address)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # Ray's notice about accelerator environment variables
        try:
            ray.init(address=address, logging_level="error", log_to_driver=False)
        except Exception as error:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError or ValueError here
            raise FedsimError(f"engine.address={address}: cannot join a Ray cluster there "
                              f"({first_line(error)})") from None
    try:
        return live_nodes()
    finally:
        ray.shutdown()


def _amount(value: float) -> str:
    return f"{value:g}"


def shortfall(request: Mapping[str, float], nodes: Sequence[Mapping[str, float]], address: str | None) -> str:
    """One line: the requested keys no node can give, and what the nodes have."""
    largest = {key: max((node.get(RESOURCE_NAMES[key], 0.0) for node in nodes), default=0.0) for key in request}
    short = [key for key, need in request.items() if need > 0 and largest[key] < need]
    where = "this machine has" if address is None else f"the largest node of the Ray cluster at {address} has"
    if short:
        asked = ", ".join(f"engine.client_resources.{key}={_amount(request[key])}" for key in short)
        most = ", ".join(f"{_amount(largest[key])} {RESOURCE_NAMES[key]}" for key in short)
        local = " (engine.address=null starts Ray here)" if address is None else ""
        return (f"{asked}: more than a Ray node can give; {where} {most}{local}: lower it, "
                "or join a larger Ray cluster with engine.address")
    asked = ", ".join(f"{key}={_amount(need)}" for key, need in request.items() if need > 0)
    have = "; ".join(", ".join(f"{_amount(node.get(name, 0.0))} {name}" for name in RESOURCE_NAMES.values())
                     for node in nodes[:8])
    return (f"engine.client_resources {asked}: no single node of the Ray cluster at {address} has all of it "
            f"(nodes: {have})")


def check_client_resources(engine: Mapping[str, Any]) -> int:
    """Raise a FedsimError unless some Ray node can hold one client of the (validated) flower engine config; return
    how many fit at once (the size of Flower's actor pool)."""
    request = client_request(engine)
    address = engine.get("address")
    nodes = [local_node(engine.get("ray_init_args") or {})] if address is None else cluster_nodes(address)
    capacity = sum(clients_per_node(request, node) for node in nodes)
    if capacity == 0:
        raise FedsimError(shortfall(request, nodes, address))
    return capacity
