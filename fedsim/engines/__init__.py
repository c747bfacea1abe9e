"""Simulation engines: how ClientApp calls are executed. Chosen with `engine=<name>`, whose config entry names the
Engine class (`_target_`) and its arguments."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from ..build import locate
from .base import Engine
from .flower import FlowerEngine
from .inprocess import InProcessEngine, InProcessGrid
from .vectorized import VectorizedEngine, VectorizedGrid


def engine_class(engine: Mapping[str, Any]) -> type[Engine]:
    """The class an `engine` config entry names (configuration validation checks it is an Engine)."""
    return locate(str(engine["_target_"]))


def engine_arguments(engine: Mapping[str, Any]) -> dict[str, Any]:
    """An `engine` config entry's constructor arguments: all its keys but `_target_` and `name`, the run's label."""
    return {key: value for key, value in engine.items() if key not in ("_target_", "name")}


def check_engine_resources(engine: Mapping[str, Any]) -> None:
    """Before any data loads: a FedsimError when the machines cannot run the configured engine
    (`Engine.check_resources`)."""
    engine_class(engine).check_resources(engine_arguments(engine))


def make_engine(engine: Mapping[str, Any], device: str = "auto",
                model: Callable[[], nn.Module] | None = None) -> Engine:
    """Build the engine an `engine` config entry names; the experiment's `device` and its model (built by `model` if
    needed) are there for settings that depend on them (`engine.workers=auto`)."""
    return engine_class(engine).from_config(engine_arguments(engine), device, model)


__all__ = ["Engine", "FlowerEngine", "InProcessEngine", "InProcessGrid", "VectorizedEngine", "VectorizedGrid",
           "check_engine_resources", "engine_arguments", "engine_class", "make_engine"]
