"""fedsim under Flower's Deployment Runtime: a SuperLink and 3 SuperNodes as separate processes on loopback, with TLS
and SuperNode authentication, over the real network stack (Flower 1.41's Fleet API is HTTPS).

The tests share one federation (a SuperLink and its SuperNodes take ~10 s to start and each run ~1-2 min on
2 cores); the test that kills a SuperNode runs last and starts a fourth node of its own to kill.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedsim.config import compose_experiment
from fedsim.deploy.certs import make_certificates
from fedsim.deploy.local_federation import LocalFederation
from fedsim.deploy.processes import TOKEN_VARIABLE, processes_with_token
from fedsim.run import run_experiment

pytestmark = [pytest.mark.deploy, pytest.mark.slow]  # not in the default run (see addopts): `pytest -m deploy`

NODES = 3
COMMON = ["num_clients=3", "num_rounds=3", "seed=1", "progress=false"]
RUN_TIMEOUT = 420.0


def _metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as stream:
        return list(csv.DictReader(stream))


def _close(a: str | float | None, b: str | float | None, tol: float = 1e-5) -> bool:
    if a in ("", None) or b in ("", None):
        return a in ("", None) and b in ("", None)
    return math.isclose(float(a), float(b), rel_tol=tol, abs_tol=tol)


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    with LocalFederation(tmp_path_factory.mktemp("federation"), NODES, say=lambda line: None) as running:
        yield running


def _assert_same_run(deployed: Path, simulated: Path) -> None:
    deployed_rows, simulated_rows = _metrics(deployed), _metrics(simulated)
    assert len(deployed_rows) == len(simulated_rows) == 4  # round 0 (initial model) + 3 rounds
    for ours, theirs in zip(deployed_rows, simulated_rows, strict=True):
        for column in ("test_accuracy", "test_loss", "train_loss", "client_acc_mean", *[f"acc_client_{i}" for i in range(NODES)]):
            assert _close(ours[column], theirs[column]), (ours["round"], column, ours[column], theirs[column])
        assert ours["sampled"] == theirs["sampled"] and ours["failures"] == theirs["failures"] == "0"
    ours_summary = json.loads((deployed / "summary.json").read_text())
    theirs_summary = json.loads((simulated / "summary.json").read_text())
    assert _close(ours_summary["final_accuracy"], theirs_summary["final_accuracy"])


@pytest.mark.parametrize(("strategy", "client_evaluation"), [("fedavg", "1.0"), ("feddisco", "0.0")])
def test_deployed_run_matches_the_in_process_simulation(federation, tmp_path, strategy, client_evaluation):
    """FedAvg with every client evaluating each round; FedDisco without (one ClientApp process less per node and
    round: each message starts one on a SuperNode, ~5 s on 2 busy cores)."""
    overrides = [*COMMON, f"strategy={strategy}", f"fraction_evaluate={client_evaluation}"]
    lines: list[str] = []
    started = time.monotonic()
    summary = federation.submit(overrides, tmp_path / "deployed", on_line=lines.append, timeout=RUN_TIMEOUT)
    print(f"deployed {strategy}: {time.monotonic() - started:.0f} s, final accuracy {summary['final_accuracy']:.6f}")
    assert any("round 3/3" in line for line in lines), lines[-10:]
    run_experiment(compose_experiment([*overrides, "engine=inprocess"]), tmp_path / "simulated", show_progress=False)
    _assert_same_run(tmp_path / "deployed", tmp_path / "simulated")


def test_a_supernode_with_an_unregistered_key_is_refused(federation):
    stranger = federation.start_supernode(0, private_key=federation.unregistered_key(), name="stranger")
    log = federation.processes.log_path("stranger")
    deadline = time.monotonic() + 60
    while stranger.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    text = log.read_text(errors="replace")
    if stranger.poll() is None:
        federation.processes.stop_one("stranger")
    assert stranger.returncode not in (None, 0), text[-2000:]
    assert "Failed to activate SuperNode" in text, text[-2000:]  # Flower's exit code 305: the SuperLink said no
    listed = federation.flwr("supernode", "ls", "--format", "json")
    assert listed.stdout.count('"online"') == NODES, listed.stdout


def test_a_node_killed_mid_run_leaves_the_survivors_to_finish(federation, tmp_path):
    """Node 2 dies (SIGKILL, like a machine losing power) after round 1; the run ends on nodes 0 and 1 and
    metrics.csv records the lost replies as failures.

    The SuperLink answers messages to a node that missed its heartbeats (2 x 30 s) with a "node unavailable" error
    reply, which the round counts as a failure. With the default config (strategy.min_available_nodes =
    num_clients) later rounds start without it: fedsim lowers it to 1 once every node has been discovered."""
    overrides = [*COMMON, "strategy=fedavg", "server.round_timeout=300", "fraction_evaluate=0"]

    def kill_after_round_one(line: str) -> None:
        if "round 1/3" in line and "supernode-2" in federation.processes.processes:
            federation.processes.stop_one("supernode-2")

    summary = federation.submit(overrides, tmp_path / "run", on_line=kill_after_round_one, timeout=RUN_TIMEOUT)
    rows = _metrics(tmp_path / "run")
    assert [row["round"] for row in rows] == ["0", "1", "2", "3"]
    assert rows[1]["train_clients"] == "3" and rows[1]["failures"] == "0"
    later = rows[2:]
    assert all(int(row["train_clients"]) == 2 for row in later), later
    assert sum(int(row["failures"]) for row in later) >= 1, later
    assert summary["final_accuracy"] > 0.5


def test_certificates_name_the_given_hosts(tmp_path):
    from cryptography import x509

    files = make_certificates(tmp_path, 2, ("superlink.example.org", "10.1.2.3"))
    names = x509.load_pem_x509_certificate(files.server_cert.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert {"localhost", "superlink.example.org"} <= set(names.get_values_for_type(x509.DNSName))
    assert {"127.0.0.1", "10.1.2.3"} <= {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    assert files.node_public_keys[1].read_text().startswith("ecdsa-sha2-nistp384 ")
    assert oct(files.node_private_keys[1].stat().st_mode & 0o777) == "0o600"


def test_ctrl_c_leaves_no_process_behind(tmp_path):
    """`fedsim deploy local` interrupted mid-run (SIGINT, as Ctrl-C sends) stops the SuperLink, the SuperNodes and
    everything they started: no process carrying the run's environment token survives."""
    token = "ctrl-c-test-" + os.urandom(4).hex()
    env = {**os.environ, TOKEN_VARIABLE: token, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", "from fedsim.cli import main; main()", "deploy", "local", "--nodes", "2",
               "--out", str(tmp_path / "out"), "num_rounds=50"]
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True) as launcher:
        assert launcher.stdout is not None
        seen = []
        for line in launcher.stdout:
            seen.append(line)
            if "round 1/50" in line:
                break
        assert processes_with_token(token), "".join(seen[-20:])
        launcher.send_signal(signal.SIGINT)
        rest, _ = launcher.communicate(timeout=60)
    survivors = processes_with_token(token)
    assert not survivors, survivors
    assert "interrupted" in rest, rest[-2000:]


def _netns_unavailable() -> str | None:
    """Why nodes cannot get network namespaces here, or None when they can (root and a working `ip netns`)."""
    import shutil

    if sys.platform != "linux" or shutil.which("ip") is None:
        return "network namespaces need Linux and iproute2's `ip`"
    if os.geteuid() != 0:
        return "network namespaces (`ip netns add`, veth, bridge) need root or CAP_NET_ADMIN; this user has neither"
    probe = f"fsp{os.getpid() % 100000}"
    added = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if added.returncode != 0:
        return f"`ip netns add` is not permitted here: {added.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


class _Namespaces:
    """A bridge on the host (the SuperLink's side, 10.213.<k>.1) and one network namespace per node, each joined to
    the bridge by a veth pair: nodes reach the SuperLink only over that link, not over the host's loopback."""

    def __init__(self, count: int) -> None:
        tag = os.urandom(2).hex()
        self.subnet = f"10.213.{int(tag, 16) % 200 + 20}"
        self.bridge, self.names = f"fsb{tag}", [f"fsn{tag}-{i}" for i in range(count)]
        self._links = [f"fsv{tag}{i}" for i in range(count)]

    @property
    def host(self) -> str:
        return f"{self.subnet}.1"

    def __enter__(self) -> _Namespaces:
        commands = [["ip", "link", "add", self.bridge, "type", "bridge"],
                    ["ip", "addr", "add", f"{self.host}/24", "dev", self.bridge], ["ip", "link", "set", self.bridge, "up"]]
        for i, (name, link) in enumerate(zip(self.names, self._links, strict=True)):
            commands += [["ip", "netns", "add", name], ["ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", name],
                         ["ip", "link", "set", link, "master", self.bridge], ["ip", "link", "set", link, "up"],
                         ["ip", "-n", name, "addr", "add", f"{self.subnet}.{10 + i}/24", "dev", "eth0"],
                         ["ip", "-n", name, "link", "set", "eth0", "up"], ["ip", "-n", name, "link", "set", "lo", "up"]]
        try:
            for command in commands:
                subprocess.run(command, check=True, capture_output=True, text=True)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self.names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)


def test_nodes_in_their_own_network_namespaces(tmp_path):
    """Each SuperNode in its own network namespace, reaching the SuperLink over a veth/bridge link with TLS (the
    certificate names the bridge address) and node auth: a 2-round FedAvg gives the simulation's final accuracy."""
    reason = _netns_unavailable()
    if reason is not None:
        pytest.skip(reason)
    overrides = [*COMMON, "num_rounds=2", "strategy=fedavg", "fraction_evaluate=0"]
    with _Namespaces(NODES) as namespaces, LocalFederation(
        tmp_path / "federation", NODES, say=lambda line: None, host=namespaces.host,
        node_prefix=lambda i: ["ip", "netns", "exec", namespaces.names[i]],
    ) as running:
        summary = running.submit(overrides, tmp_path / "deployed", timeout=RUN_TIMEOUT)
        for i in range(NODES):  # the nodes really live apart: the host's loopback SuperLink port is not theirs
            probe = subprocess.run(["ip", "netns", "exec", namespaces.names[i], sys.executable, "-c",
                                    f"import socket; socket.create_connection(('127.0.0.1', {running.port}), timeout=2)"],
                                   capture_output=True, text=True, check=False)
            assert probe.returncode != 0
    simulated = run_experiment(compose_experiment([*overrides, "engine=inprocess"]), tmp_path / "simulated", show_progress=False)
    assert _close(summary["final_accuracy"], simulated["final_accuracy"])
