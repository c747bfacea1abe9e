"""Imports run one way: plug-ins -> fedsim.protocol <- core.

Every import statement of the source tree (module level or inside a function) is read with `ast` and resolved to an
absolute module name, the top-level folders under the names they are installed as (`strategies/` is
`fedsim.strategies`). The rules:
- `strategies/` and `partitions/` import nothing from fedsim but `fedsim.protocol` (and their own package);
- `fedsim.protocol` imports nothing from the rest of fedsim;
- the core (every other fedsim module, the engines included) imports no strategy: it reads what a strategy declares
  through the protocol and builds it from `_target_`. (It does import from `fedsim.partitions` the constraint table
  of flwr-datasets' own partitioners, which cannot declare anything themselves.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"fedsim": "fedsim", "strategies": "fedsim.strategies", "partitions": "fedsim.partitions"}


def _module_name(path: Path) -> str:
    relative = path.relative_to(REPO).with_suffix("")
    parts = list(relative.parts)
    parts[0] = PACKAGES[parts[0]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names if not node.module]
    return found


def _sources(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _violations(folder: str, allowed: tuple[str, ...], forbidden: tuple[str, ...] = ("fedsim",)) -> list[str]:
    return [f"{path.relative_to(REPO)}:{line} imports {module}"
            for path in _sources(folder) for line, module in _imports(path)
            if any(_within(module, f) for f in forbidden) and not any(_within(module, a) for a in allowed)]


@pytest.mark.parametrize("folder", ["strategies", "partitions"])
def test_plug_ins_import_only_the_protocol_from_fedsim(folder):
    assert _violations(folder, ("fedsim.protocol", PACKAGES[folder])) == []


def test_the_protocol_imports_nothing_else_from_fedsim():
    assert _violations("fedsim/protocol", ("fedsim.protocol",)) == []


def test_the_core_and_its_engines_import_no_strategy():
    core = [path for path in _sources("fedsim") if "protocol" not in path.relative_to(REPO).parts]
    found = [f"{path.relative_to(REPO)}:{line} imports {module}" for path in core for line, module in _imports(path)
             if _within(module, "fedsim.strategies")]
    assert found == []


def test_the_rules_see_a_violation():
    """The reader resolves relative imports: a strategy reaching into the core by `..` is caught."""
    sample = REPO / "strategies" / "fedavg.py"
    resolved = {module for _, module in _imports(sample)}
    assert "fedsim.strategies.base" in resolved  # `from .base import ...` resolved inside the package
    assert _within("fedsim.config", "fedsim") and not _within("fedsim.config", "fedsim.protocol")
