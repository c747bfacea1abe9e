"""Package attributes imported on first use (PEP 562).

The ClientApp, which Flower may start once per message, imports `fedsim` and a few client-side modules of
`fedsim.strategies` and `fedsim.data`. Those packages re-export names whose modules pull in datasets, scikit-learn,
scipy and flwr-datasets; with `lazy_attributes` a name's module loads only when the name is first used.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(package: str, sources: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`: `sources` maps each public name to the module defining it (relative
    to the package, or absolute). Use as `__getattr__, __dir__ = lazy_attributes(__name__, {...})`."""
    namespace = vars(sys.modules[package])

    def __getattr__(name: str) -> Any:  # pylint: disable=invalid-name
        if name not in sources:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(sources[name], package), name)
        namespace[name] = value  # later lookups are plain attribute reads
        return value

    def __dir__() -> list[str]:  # pylint: disable=invalid-name
        return sorted({*namespace, *sources})

    return __getattr__, __dir__
