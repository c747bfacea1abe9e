"""The repo's layout (strategies/, partitions/, configs/ beside fedsim/) works installed, as a wheel, and as a FAB."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

IMPORT_CHECK = (
    "import fedsim, fedsim.strategies as s, fedsim.partitions as p, fedsim.client, fedsim.server;"
    "from fedsim.config import compose_experiment;"
    "assert s.FedAvg and p.DirichletPartitioner;"
    "assert compose_experiment()['num_rounds'] == 20;"
    "print(fedsim.__file__); print(s.__file__)"
)


def test_users_import_fedsim_strategies_and_partitions():
    import fedsim.partitions
    import fedsim.strategies

    assert fedsim.strategies.FedAvg.__name__ == "FedAvg"
    assert fedsim.partitions.DirichletPartitioner.__name__ == "DirichletPartitioner"


def test_fab_layout_first_on_sys_path(tmp_path):
    """A FAB unpacks the repo's folders and puts them first on sys.path, shadowing an installed fedsim."""
    fab = tmp_path / "fab"
    for folder in ("fedsim", "strategies", "partitions", "configs"):
        shutil.copytree(REPO / folder, fab / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", fab / "pyproject.toml")
    completed = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(fab)!r}); {IMPORT_CHECK}"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr
    module_file, strategies_file = completed.stdout.split()
    assert module_file.startswith(str(fab)) and strategies_file.startswith(str(fab / "strategies"))


@pytest.mark.slow
def test_wheel_carries_the_mapped_folders(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    wheel = next(tmp_path.glob("fedsim-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("fedsim/strategies/__init__.py", "fedsim/partitions/__init__.py", "fedsim/configs/config.yaml",
                     "fedsim/configs/strategy/fedavg.yaml", "fedsim/engines/inprocess.py", "fedsim/data/federation.py",
                     "fedsim/deploy/local_federation.py"):
        assert required in names, required
    assert not any(name.startswith(("strategies/", "partitions/", "configs/", "tests/")) for name in names)
    # the wheel alone, unpacked on its own path, imports and composes configs
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    completed = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {IMPORT_CHECK}"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split()[1].startswith(str(site / "fedsim" / "strategies"))


@pytest.mark.slow  # builds a FAB and runs flwr: 19 s on 2 cores
def test_a_real_flower_app_bundle_runs_from_its_own_folder(tmp_path):
    """`flwr build` / `flwr run .` of this repo: the FAB carries the package, its mapped folders and the configs (not
    tests or bench), and unpacked first on sys.path it imports the ServerApp and ClientApp that pyproject names."""
    import io

    from flwr.cli.build import build_fab_from_disk

    fab = zipfile.ZipFile(io.BytesIO(build_fab_from_disk(REPO)))
    names = set(fab.namelist())
    assert {"pyproject.toml", "fedsim/server.py", "fedsim/node_config.py", "strategies/__init__.py",
            "configs/config.yaml", "configs/strategy/feddisco.yaml"} <= names
    assert not any(name.startswith(("tests/", "bench/", "docs/")) for name in names)
    folder = tmp_path / "fab"
    fab.extractall(folder)
    check = IMPORT_CHECK + ";from fedsim.server import app as s; from fedsim.client import app as c; assert s and c"
    completed = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(folder)!r}); {check}"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split()[0].startswith(str(folder))
