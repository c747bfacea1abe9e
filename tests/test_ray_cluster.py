"""engine=flower on a running Ray cluster, and client_resources checked against the nodes before any data is loaded.

The `cluster` tests start a Ray head and a second Ray node on this machine (about a minute on 2 cores; CI runs them
as their own step, `pytest -m cluster`). The others need no Ray at all and run in the default suite.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fedsim.config import compose_experiment, validate
from fedsim.engines import make_engine
from fedsim.engines.ray_resources import check_client_resources, clients_per_node, local_node
from fedsim.errors import ConfigError, FedsimError

from .conftest import read_metrics

FLOWER = "fedsim.engines.FlowerEngine"
README_GPU_EXAMPLE = ["engine=flower", "engine.client_resources.num_cpus=1", "engine.client_resources.num_gpus=0.25"]


@pytest.mark.parametrize("overrides, key", [
    (["engine.client_resources.num_gpus=-1"], "engine.client_resources.num_gpus"),
    (["engine.client_resources.num_cpus=true"], "engine.client_resources.num_cpus"),
    (["engine.client_resources.num_gpus=0.00001"], "engine.client_resources.num_gpus"),  # below Ray's 0.0001 unit
    (["+engine.client_resources.memory=1000000"], "engine.client_resources.memory"),  # Flower passes num_* only
    (["engine.address=nowhere"], "engine.address"),
    (["engine.address=10.0.0.1:99999"], "engine.address"),
    (["engine.address=auto", "+engine.ray_init_args.num_cpus=2"], "engine.ray_init_args.num_cpus"),
    (["+engine.ray_init_args.address=auto"], "engine.ray_init_args.address"),
])
def test_flower_settings_are_validated_with_the_config(overrides, key):
    with pytest.raises(ConfigError) as error:
        validate(compose_experiment(["engine=flower", *overrides]))
    assert error.value.key == key


def test_good_addresses_pass_validation():
    for address in ("auto", "10.0.0.1:6379", "ray://head.example.org:10001", "[::1]:6379"):
        validate(compose_experiment(["engine=flower", f"engine.address={address!r}"]))


def test_clients_per_node_follows_floor_of_each_resource():
    assert clients_per_node({"num_cpus": 1.0, "num_gpus": 0.25}, {"CPU": 2.0, "GPU": 1.0}) == 2  # CPUs bind
    assert clients_per_node({"num_cpus": 1.0, "num_gpus": 0.25}, {"CPU": 8.0, "GPU": 1.0}) == 4  # GPU shares bind
    assert clients_per_node({"num_cpus": 1.0, "num_gpus": 0.0}, {"CPU": 3.0}) == 3  # no GPU asked, none needed
    assert clients_per_node({"num_cpus": 0.1, "num_gpus": 0.0}, {"CPU": 0.3}) == 3  # 0.3 / 0.1 < 3 in floats
    assert clients_per_node({"num_cpus": 1.0, "num_gpus": 0.5}, {"CPU": 16.0}) == 0  # a node without GPUs


def test_a_local_ray_is_checked_against_this_machine():
    sized = {"name": "flower", "ray_init_args": {"num_cpus": 2, "num_gpus": 0}}
    with pytest.raises(FedsimError) as error:
        check_client_resources({**sized, "client_resources": {"num_cpus": 1, "num_gpus": 0.25}})
    assert str(error.value) == ("engine.client_resources.num_gpus=0.25: more than a Ray node can give; "
                                "this machine has 0 GPU (engine.address=null starts Ray here): lower it, "
                                "or join a larger Ray cluster with engine.address")
    with pytest.raises(FedsimError, match=r"num_cpus=4, engine.client_resources.num_gpus=1: .* has 2 CPU, 0 GPU"):
        check_client_resources({**sized, "client_resources": {"num_cpus": 4, "num_gpus": 1}})
    one_gpu = {"name": "flower", "ray_init_args": {"num_cpus": 8, "num_gpus": 1}}
    assert check_client_resources({**one_gpu, "client_resources": {"num_cpus": 1, "num_gpus": 0.25}}) == 4
    detected = local_node({})  # what Ray itself would declare for this machine
    assert 1 <= detected["CPU"] <= (os.cpu_count() or 1) and detected["GPU"] == torch.cuda.device_count()


def test_a_request_that_fits_no_single_node_names_the_nodes(monkeypatch):
    import fedsim.engines.ray_resources as ray_resources

    nodes = [{"CPU": 4.0, "GPU": 0.0}, {"CPU": 1.0, "GPU": 1.0}]
    monkeypatch.setattr(ray_resources, "cluster_nodes", lambda address: nodes)
    engine = {"name": "flower", "address": "10.0.0.1:6379", "client_resources": {"num_cpus": 2, "num_gpus": 1}}
    with pytest.raises(FedsimError) as error:
        check_client_resources(engine)
    assert str(error.value) == ("engine.client_resources num_cpus=2, num_gpus=1: no single node of the Ray cluster at "
                                "10.0.0.1:6379 has all of it (nodes: 4 CPU, 0 GPU; 1 CPU, 1 GPU)")
    # both on node 2
    assert check_client_resources({**engine, "client_resources": {"num_cpus": 0.5, "num_gpus": 0.5}}) == 2


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_address_where_nothing_listens_fails_at_once():
    address = f"127.0.0.1:{_free_port()}"
    started = time.monotonic()
    with pytest.raises(FedsimError, match=rf"engine.address={address}: nothing answers at .*ray start --head --port"):
        check_client_resources({"name": "flower", "address": address, "client_resources": {"num_cpus": 1}})
    assert time.monotonic() - started < 10  # ray.init alone retries a dead address for minutes


def test_the_engine_joins_the_configured_address_or_starts_its_own_ray():
    engine = make_engine({"_target_": FLOWER, "client_resources": {"num_cpus": 2}, "address": "10.0.0.1:6379"})
    assert engine.ray_init_args["address"] == "10.0.0.1:6379"
    assert engine.client_resources == {"num_cpus": 2.0, "num_gpus": 0.0}
    # not RAY_ADDRESS
    assert make_engine({"_target_": FLOWER, "client_resources": {}}).ray_init_args["address"] == "local"


@pytest.mark.slow  # a fedsim process: its imports take 8-25 s on 2 busy cores
@pytest.mark.skipif(torch.cuda.is_available(), reason="the README's GPU example runs where a GPU is")
def test_readme_gpu_example_fails_in_one_line_on_a_machine_without_gpu(tmp_path):
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "fedsim.cli", *README_GPU_EXAMPLE], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "COLUMNS": "400"})
    seconds = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("fedsim: error: engine.client_resources.num_gpus=0.25: more than"), done.stderr
    assert "0 GPU" in lines[0]
    assert seconds < 60, f"{seconds:.0f} s"  # it used to wait 600 s for nodes, then print 97 lines of traceback
    assert not list(tmp_path.rglob("metrics.csv")) and not list(tmp_path.rglob("partition*"))  # no data was loaded


# ---- a real two-node Ray cluster on this machine ----

def _ray_processes(temp_dir: str) -> set[int]:
    """The cluster's processes: those whose command line names its temp folder, and their descendants (workers)."""
    parents: dict[int, int] = {}
    roots: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if temp_dir in (entry / "cmdline").read_bytes().decode(errors="replace"):
                roots.add(int(entry.name))
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, grew = set(roots), True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in found} - found
        found |= children
        grew = bool(children)
    return found - {os.getpid()}


def _stop_cluster(temp_dir: str) -> None:
    """Stop this cluster's processes by id (`ray stop` would stop every Ray on the machine)."""
    pids = _ray_processes(temp_dir)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
        time.sleep(0.2)
    for pid in pids | _ray_processes(temp_dir):  # a raylet can stay in its drain for long after SIGTERM
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _ray_start(*args: str, temp_dir: str) -> None:
    ray = Path(sys.executable).with_name("ray")
    done = subprocess.run([str(ray), "start", *args, "--temp-dir", temp_dir, "--disable-usage-stats",
                           "--dashboard-agent-listen-port", str(_free_port())], capture_output=True, text=True,
                          timeout=180, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A Ray head with 1 CPU and no GPU, and a second node with 2 CPUs and 1 (declared) GPU; yields the address."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the cluster's processes are found through /proc")
    temp_dir = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths must fit 107 characters
    port = _free_port()
    address = f"127.0.0.1:{port}"
    try:
        _ray_start("--head", "--port", str(port), "--num-cpus", "1", "--num-gpus", "0", "--include-dashboard=false",
                   "--dashboard-port", str(_free_port()), "--ray-client-server-port", str(_free_port()),
                   temp_dir=temp_dir)
        _ray_start("--address", address, "--num-cpus", "2", "--num-gpus", "1", temp_dir=temp_dir)
        yield address
    finally:
        _stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.cluster
def test_a_run_on_the_second_node_gives_the_inprocess_metrics(ray_cluster, run_quietly):
    gpu_share = ("engine.client_resources.num_cpus=1", "engine.client_resources.num_gpus=0.5")
    on_cluster = {"name": "flower", "address": ray_cluster, "client_resources": {"num_cpus": 1, "num_gpus": 0.5}}
    assert check_client_resources(on_cluster) == 2  # all on the second node: the head has no GPU (min(2/1, 1/0.5))
    if not torch.cuda.is_available():  # nor has this machine: only the second node can hold these clients
        with pytest.raises(FedsimError, match="num_gpus=0.5: more than a Ray node can give; this machine has 0 GPU"):
            check_client_resources({**on_cluster, "address": None})
    overrides = ("num_rounds=2", "num_clients=4", "fraction_train=0.5", "seed=11")
    local, local_dir = run_quietly(*overrides, "engine=inprocess", name="inprocess")
    remote, remote_dir = run_quietly(*overrides, "engine=flower", f"engine.address={ray_cluster}", *gpu_share,
                                     name="cluster")
    local_rows, remote_rows = read_metrics(local_dir), read_metrics(remote_dir)
    assert len(local_rows) == len(remote_rows) == 3  # round 0 (initial model) and two rounds
    for a, b in zip(local_rows, remote_rows, strict=True):
        assert a["sampled"] == b["sampled"]
        assert float(a["test_loss"]) == pytest.approx(float(b["test_loss"]), rel=1e-5)
        assert float(a["test_accuracy"]) == pytest.approx(float(b["test_accuracy"]), abs=1e-9)
        if a["train_loss"]:
            assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), rel=1e-5)
    assert local["final_accuracy"] == pytest.approx(remote["final_accuracy"], abs=1e-9)
    assert local["client_accuracy"]["mean"] == pytest.approx(remote["client_accuracy"]["mean"], rel=1e-6)


@pytest.mark.cluster
def test_a_request_the_cluster_cannot_hold_fails_in_one_line(ray_cluster, tmp_path):
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "fedsim.cli", "engine=flower", f"engine.address={ray_cluster}",
                           "engine.client_resources.num_cpus=1", "engine.client_resources.num_gpus=2"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "400"})
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == [f"fedsim: error: engine.client_resources.num_gpus=2: more than a Ray node can give; the largest "
                     f"node of the Ray cluster at {ray_cluster} has 1 GPU: lower it, or join a larger Ray cluster with "
                     f"engine.address"], done.stderr
    assert time.monotonic() - started < 90


@pytest.mark.cluster
def test_auto_joins_the_cluster_ray_address_names(ray_cluster, monkeypatch):
    import ray

    assert not ray.is_initialized()  # the earlier runs closed their connections: "auto" has to find the cluster
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster)
    engine = {"name": "flower", "address": "auto", "client_resources": {"num_cpus": 1, "num_gpus": 0}}
    assert check_client_resources(engine) == 3  # 1 on the head, 2 on the second node (this machine alone has 2 CPUs)
