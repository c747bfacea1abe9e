"""fedsim: federated-learning simulation on Flower's Message API."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"

_PACKAGE_DIR = Path(__file__).resolve().parent
_TOP_LEVEL_FOLDERS = ("strategies", "partitions", "configs")


def _map_source_tree_folders() -> None:
    """Make ``fedsim.strategies`` & co. importable from a source checkout or a Flower App Bundle.

    The repo keeps these folders beside ``fedsim/``. An installed wheel carries them inside the package and an
    editable install maps them, but a FAB puts the repo's own folders first on ``sys.path``, so ``import fedsim``
    finds this directory and nothing would map them. Here each folder is registered as a subpackage.
    """
    for name in _TOP_LEVEL_FOLDERS:
        full_name = f"{__name__}.{name}"
        if full_name in sys.modules or (_PACKAGE_DIR / name).is_dir():
            continue
        init_file = _PACKAGE_DIR.parent / name / "__init__.py"
        if not init_file.is_file():
            continue
        spec = importlib.util.spec_from_file_location(
            full_name, init_file, submodule_search_locations=[str(init_file.parent)]
        )
        if spec is None or spec.loader is None:  # pragma: no cover - defensive
            continue
        module = importlib.util.module_from_spec(spec)
        sys.modules[full_name] = module
        spec.loader.exec_module(module)
        setattr(sys.modules[__name__], name, module)


def config_dir() -> Path:
    """The directory of fedsim's Hydra configs, in a wheel or in a source tree."""
    inside = _PACKAGE_DIR / "configs"
    return inside if inside.is_dir() else _PACKAGE_DIR.parent / "configs"


_map_source_tree_folders()
