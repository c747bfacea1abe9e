"""Simulation engines: how ClientApp calls are executed. Chosen with `engine=<name>`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from .base import Engine
from .flower import FlowerEngine
from .inprocess import InProcessEngine, InProcessGrid
from .vectorized import VectorizedEngine, VectorizedGrid

ENGINES = ("inprocess", "vectorized", "flower")


def make_engine(engine: Mapping[str, Any], device: str = "auto", model: Callable[[], nn.Module] | None = None) -> Engine:
    """Build the engine an `engine` config group entry names; the experiment's `device` and its model (built by
    `model` if needed) settle `engine.workers=auto`."""
    name = engine["name"]
    if name == "inprocess":
        return InProcessEngine(engine.get("workers", 1), device, model)
    if name == "vectorized":
        return VectorizedEngine(engine.get("max_cohort", "auto"))
    if name == "flower":
        return FlowerEngine(engine.get("client_resources", {}), engine.get("ray_init_args"), engine.get("address"))
    raise ValueError(f"engine.name={name!r}: one of {', '.join(ENGINES)}")


__all__ = ["ENGINES", "Engine", "FlowerEngine", "InProcessEngine", "InProcessGrid", "VectorizedEngine", "VectorizedGrid", "make_engine"]
