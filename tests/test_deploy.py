"""fedsim under Flower's Deployment Runtime, as the README deploys it: the SuperLink on loopback behind the nginx
proxy (client certificates, Fleet API only), SuperNodes started with `fedsim deploy node`, each a separate
process, over the real network stack.

Most tests share one federation of 3 nodes (it takes ~15 s to start); the ones that need their own (network
namespaces, `fedsim deploy local` from the command line) make it.
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
from fedsim.deploy.certs import add_nodes, make_certificates, revoke_node
from fedsim.deploy.local_federation import LocalFederation
from fedsim.deploy.processes import TOKEN_VARIABLE, processes_with_token
from fedsim.errors import DeployError
from fedsim.run import run_experiment

from .conftest import data_for, give_nodes_config, read_metrics

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


def _simulate(overrides: list[str], folder: Path) -> Path:
    """The same experiment on the in-process engine, one client at a time: each client then trains with as many
    intra-op threads as a SuperNode on this machine does, so the float arithmetic is the same."""
    run_experiment(compose_experiment([*overrides, "engine=inprocess", "engine.workers=1"]), folder,
                   show_progress=False)
    return folder


def _assert_same_run(deployed: Path, simulated: Path, nodes: int = NODES) -> None:
    deployed_rows, simulated_rows = _metrics(deployed), _metrics(simulated)
    assert len(deployed_rows) == len(simulated_rows)
    for ours, theirs in zip(deployed_rows, simulated_rows, strict=True):
        for column in ("test_accuracy", "test_loss", "train_loss", "client_acc_mean",
                       *[f"acc_client_{i}" for i in range(nodes)]):
            assert _close(ours[column], theirs[column]), (ours["round"], column, ours[column], theirs[column])
        for column in ("sampled", "failures", "rejected"):
            assert ours[column] == theirs[column], (ours["round"], column, ours[column], theirs[column])
    ours_summary = json.loads((deployed / "summary.json").read_text())
    theirs_summary = json.loads((simulated / "summary.json").read_text())
    assert _close(ours_summary["final_accuracy"], theirs_summary["final_accuracy"])


def _online(federation: LocalFederation) -> int:
    return federation.flwr("supernode", "ls", "--format", "json").stdout.count('"online"')


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    with LocalFederation(tmp_path_factory.mktemp("federation"), NODES, say=lambda line: None) as running:
        yield running


@pytest.mark.parametrize(("strategy", "client_evaluation"), [("fedavg", "1.0"), ("feddisco", "0.0"),
                                                              ("fedcollab", "1.0"), ("agnosticfair", "1.0")])
def test_deployed_run_matches_the_in_process_simulation(federation, tmp_path, strategy, client_evaluation):
    """Same metrics as `engine=inprocess` (FedCollab: its distance stage's queries through the SuperLink too;
    AgnosticFair: a stage between rounds, and the disparity audit); then the finished run folder cannot be submitted
    to again."""
    overrides = [*COMMON, f"strategy={strategy}", f"fraction_evaluate={client_evaluation}", *data_for(strategy)]
    lines: list[str] = []
    started = time.monotonic()
    summary = federation.submit(overrides, tmp_path / "deployed", on_line=lines.append, timeout=RUN_TIMEOUT)
    print(f"deployed {strategy}: {time.monotonic() - started:.0f} s, final accuracy {summary['final_accuracy']:.6f}")
    assert any("round 3/3" in line for line in lines), lines[-10:]
    _assert_same_run(tmp_path / "deployed", _simulate(overrides, tmp_path / "simulated"))
    assert json.loads((tmp_path / "deployed" / "deployment.json").read_text())["overrides"] == overrides
    if strategy == "agnosticfair":  # the α steps and the audit of the sensitive attribute, as simulated
        deployed, simulated = (read_metrics(tmp_path / run) for run in ("deployed", "simulated"))
        for ours, theirs in zip(deployed[1:], simulated[1:], strict=True):
            for column in ("alpha_fairness_row", "alpha_weighted_ratio", "disparity_global", "disparity_local"):
                assert _close(ours[column], theirs[column]), (ours["round"], column, ours[column], theirs[column])
    if strategy == "fedcollab":  # the stage before round 1 found the same distances and coalitions
        found = [json.loads((tmp_path / run / "preparation.json").read_text()) for run in ("deployed", "simulated")]
        assert found[0]["coalitions"] == found[1]["coalitions"]
        assert all(_close(a, b) for row, other in zip(found[0]["distances"], found[1]["distances"], strict=True)
                   for a, b in zip(row, other, strict=True))

    before = {path.name: path.read_bytes() for path in (tmp_path / "deployed").iterdir() if path.is_file()}
    with pytest.raises(DeployError, match="already holds a finished run: choose another run-dir"):
        federation.submit(overrides, tmp_path / "deployed", timeout=RUN_TIMEOUT)
    after = {path.name: path.read_bytes() for path in (tmp_path / "deployed").iterdir() if path.is_file()}
    assert {name: data for name, data in after.items() if name != "deployment.json"} == \
        {name: data for name, data in before.items() if name != "deployment.json"}


def test_a_deployed_asynchronous_run_applies_replies_as_they_arrive(federation, tmp_path):
    """FedBuff over the SuperLink (`push_messages` / `pull_messages` with real arrival order): every row takes two
    updates, the buffer of two makes one version per row, the clock moves on, and the run learns."""
    overrides = [*COMMON, "strategy=fedbuff", "strategy.concurrency=2", "strategy.buffer_size=2",
                 "client.local_epochs=2", "devices.model=lognormal"]
    summary = federation.submit(overrides, tmp_path / "deployed", timeout=RUN_TIMEOUT)
    rows = read_metrics(tmp_path / "deployed")
    assert [int(row["round"]) for row in rows] == [0, 1, 2, 3]
    assert [float(row["model_version"]) for row in rows[1:]] == [1.0, 2.0, 3.0]
    assert [float(row["updates_applied"]) for row in rows[1:]] == [2.0, 2.0, 2.0]
    times = [float(row["sim_time"]) for row in rows]
    assert times == sorted(times) and times[-1] > 0
    assert summary["final_accuracy"] > float(rows[0]["test_accuracy"]) + 0.2


# (before the tests that crash the SuperLink or kill a node of the shared federation: it needs all three)
def test_a_runs_byte_counts_are_what_crossed_the_proxy(federation, tmp_path):
    """FedAvg with FedZip-compressed updates: summary.json's bytes down are exactly the object content the proxy's
    access log shows nodes pulling, its bytes up exactly the content they pushed, and the compressed updates are
    what crossed (`fedsim.deploy.wire_log`)."""
    from fedsim.deploy import wire_log
    from fedsim.deploy.proxy import ACCESS_LOG

    assert federation.layout is not None
    log = federation.layout.proxy_dir / ACCESS_LOG
    offset = log.stat().st_size  # the log holds every earlier test's requests too: keep this run's
    overrides = [*COMMON, "strategy=fedavg", "compression=fedzip"]
    summary = federation.submit(overrides, tmp_path / "run", timeout=RUN_TIMEOUT)
    requests = wire_log.read_requests(log, offset)
    up, down = wire_log.uploaded_objects(requests), wire_log.downloaded_objects(requests)
    print(f"counted: up {summary['bytes_up']} B, down {summary['bytes_down']} B")
    print(f"wire, object content: up {up.least} B in {up.requests} push-object bodies of {up.wire} B; "
          f"down {down.least} B in {down.requests} pull-object bodies of {down.wire} B")
    for method, totals in wire_log.method_totals(requests).items():
        print(f"  {method}: {totals.requests} requests, {totals.request_bytes} B up, {totals.response_bytes} B down")
    print(f"HTTP with headers (TLS aside): {sum(r.request_total for r in requests)} B up, "
          f"{sum(r.response_total for r in requests)} B down")

    # Down: a node pulls every object of each message it is sent (it holds one message at a time, so it never has
    # one already), and a pull's envelope is fixed: the content is exactly what the server counted.
    assert down.least == down.most == summary["bytes_down"]
    # Up: each node's pulls tell its ids' size, so a push's content is exact too. The SuperLink asks a node only for
    # the objects it does not hold (ids are content hashes); a compressed reply has no object another reply could
    # share (no empty `arrays` record: `fedsim.compression.message`), so every object of every reply crossed.
    assert up.least == up.most == summary["bytes_up"], (summary["bytes_up"], up)
    # The compressed updates crossed: uncompressed, each of the 9 train replies would carry a model, as 21 of the
    # messages down do (9 train, 9 evaluate, 3 final evaluations), so up would be ~9/21 of down; FedZip's are ~1%.
    assert up.wire < down.wire / 20, (up, down)


def test_a_node_whose_key_is_not_registered_is_refused_in_one_line(federation):
    """node-3 has a valid client certificate (the proxy lets it in) but the operator never registered its key."""
    assert federation.credentials is not None
    (stranger,) = add_nodes(federation.credentials.folder, 1)
    process = federation.start_supernode(0, node=stranger, name="stranger",
                                         env={"FEDSIM_NODE_ACTIVATION_DEADLINE": str(time.time())})  # no second try
    try:
        process.wait(timeout=90)
    finally:
        if process.poll() is None:
            federation.processes.stop_one("stranger")
    text = federation.processes.log_path("stranger").read_text(errors="replace")
    assert process.returncode not in (None, 0), text[-2000:]
    assert "fedsim: error: the SuperLink refuses this node's key: on the server, register it with " \
           f"`flwr supernode register {stranger.auth_public_key} <connection> --name node-3`" in text, text[-2000:]
    assert _online(federation) == NODES


def test_a_revoked_node_is_stopped_at_the_proxy(federation):
    """After `fedsim certs --revoke` and a proxy reload, the node's own check says so in one line."""
    assert federation.credentials is not None
    (spare,) = add_nodes(federation.credentials.folder, 1)
    address = f"{federation.host}:{federation.layout.listen_port}"

    def check(node) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "fedsim.cli", "deploy", "node", "--superlink", address,
                   "--credentials", str(node.folder), "--check"]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    assert check(spare).returncode == 0
    revoke_node(federation.credentials.folder, spare.name)
    federation.processes.processes["proxy"].send_signal(signal.SIGHUP)  # nginx re-reads crl.pem
    _wait_for(lambda: check(spare).returncode != 0, 30, "the proxy to refuse the revoked certificate")
    refused = check(spare)
    assert "refused this node's client certificate: it was revoked" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert check(federation.credentials.nodes[0]).returncode == 0  # the others are unaffected


def test_a_superlink_crash_keeps_its_nodes_and_the_run_continues(federation, tmp_path):
    """kill -9 of the SuperLink mid-run; the same command starts it again on its database: the SuperNodes come back
    without being registered again, and submitting the run again continues it from its checkpoint, with the
    metrics of an uninterrupted simulation."""
    overrides = [*COMMON, "num_rounds=4", "strategy=fedavg", "fraction_evaluate=0"]
    run_dir = tmp_path / "run"
    federation.start_run(overrides, run_dir)
    _wait_for(lambda: (run_dir / "metrics.csv").exists() and len(_metrics(run_dir)) >= 3, RUN_TIMEOUT, "round 2")
    superlink = federation.processes.processes["superlink"]
    os.kill(superlink.pid, signal.SIGKILL)  # the SuperLink alone, as a crash: what it started must notice by itself
    superlink.wait(timeout=30)
    finished = len(_metrics(run_dir)) - 1
    assert finished < 4, "the run ended before the crash; make it longer"
    federation.start_server()
    _wait_for(lambda: _online(federation) == NODES, 120, "the SuperNodes to reconnect")
    summary = federation.submit(overrides, run_dir, timeout=RUN_TIMEOUT)
    assert summary["rounds_completed"] == 4
    _assert_same_run(run_dir, _simulate(overrides, tmp_path / "simulated"))
    assert len(json.loads((run_dir / "deployment.json").read_text())["flower_run_ids"]) == 2


def test_a_broken_log_stream_is_followed_again_until_the_run_ends(federation, tmp_path):
    """The `flwr run --stream` client dies after round 1 (as when a SuperLink busy with many nodes lets the stream's
    connection time out); fedsim follows the run again with `flwr log --stream` and still returns its summary."""
    overrides = [*COMMON, "strategy=fedavg"]
    lines: list[str] = []

    def break_the_stream_after_round_one(line: str) -> None:
        lines.append(line)
        if "round 1/3" in line and not any("following it again" in seen for seen in lines):
            subprocess.run(["pkill", "-KILL", "-f", f"flwr.cli.app.* run {federation.work_dir}.*--stream"], check=False)

    summary = federation.submit(overrides, tmp_path / "run", on_line=break_the_stream_after_round_one,
                                timeout=RUN_TIMEOUT)
    assert any("broke while it runs; following it again" in line for line in lines), lines[-10:]
    assert summary["rounds_completed"] == 3
    _assert_same_run(tmp_path / "run", _simulate(overrides, tmp_path / "simulated"))


def test_a_node_killed_mid_run_leaves_the_survivors_to_finish(federation, tmp_path):
    """Node 2 dies (SIGKILL, like a machine losing power) after round 1; the run ends on nodes 0 and 1 and
    metrics.csv records the lost replies as failures.

    The SuperLink answers messages to a node that missed its heartbeats (2 x 30 s) with a "node unavailable" error
    reply, which the round counts as a failure. With the default config (strategy.min_available_nodes =
    num_clients) later rounds start without it: fedsim lowers it to 1 once every node has been discovered."""
    overrides = [*COMMON, "strategy=fedavg", "server.round_timeout=300", "fraction_evaluate=0"]

    def kill_after_round_one(line: str) -> None:
        if "round 1/3" in line and federation.processes.processes["supernode-2"].poll() is None:
            federation.processes.stop_one("supernode-2")

    summary = federation.submit(overrides, tmp_path / "run", on_line=kill_after_round_one, timeout=RUN_TIMEOUT)
    rows = _metrics(tmp_path / "run")
    assert [row["round"] for row in rows] == ["0", "1", "2", "3"]
    assert rows[1]["train_clients"] == "3" and rows[1]["failures"] == "0"
    later = rows[2:]
    assert all(int(row["train_clients"]) == 2 for row in later), later
    assert sum(int(row["failures"]) for row in later) >= 1, later
    assert summary["final_accuracy"] > 0.5


# --- fedsim deploy local, interrupted, then resumed ---------------------------------------------------------------

def test_deploy_local_stops_everything_on_ctrl_c_and_fedsim_resume_finishes_the_run(tmp_path):
    """`fedsim deploy local` interrupted mid-run (SIGINT, as Ctrl-C sends) stops the SuperLink, the proxy, the
    SuperNodes and everything they started. `fedsim resume` on its run folder starts the same federation again
    and finishes the run on it, with the metrics of an uninterrupted simulation."""
    token = "ctrl-c-test-" + os.urandom(4).hex()
    env = {**os.environ, TOKEN_VARIABLE: token}  # nodes keep the test's thread count, so even rounding matches
    # slow clients (a sleep, no number changes): `flwr log --stream` relays lines in bursts, and a fast run's rounds
    # 2-4 could all have passed in the burst that brought round 1's line
    overrides = ["num_clients=2", "num_rounds=4", "seed=3", "progress=false", "faults.slow_rate=1.0",
                 "faults.slow_seconds=2.0"]
    command = [sys.executable, "-m", "fedsim.cli", "deploy", "local", "--nodes", "2", "--out", str(tmp_path / "out"),
               *overrides]
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True) as launcher:
        assert launcher.stdout is not None
        seen = []
        for line in launcher.stdout:
            seen.append(line)
            if "round 1/4" in line:
                break
        assert processes_with_token(token), "".join(seen[-20:])
        launcher.send_signal(signal.SIGINT)
        rest, _ = launcher.communicate(timeout=60)
    assert not processes_with_token(token)
    assert "interrupted" in rest, rest[-2000:]
    run_dir = tmp_path / "out" / "run"
    assert not (run_dir / "summary.json").exists()

    resumed = subprocess.run([sys.executable, "-m", "fedsim.cli", "resume", str(run_dir)], env=env, capture_output=True,
                             text=True, timeout=RUN_TIMEOUT, check=False)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    assert "restarting the local federation" in resumed.stderr
    assert not processes_with_token(token)
    assert json.loads((run_dir / "summary.json").read_text())["choices"]["engine"] == "deployment"
    _assert_same_run(run_dir, _simulate(overrides, tmp_path / "simulated"), nodes=2)


# --- each machine in its own network namespace: only the operator controls the federation ------------------------

def _netns_unavailable() -> str | None:
    """Why machines cannot get network namespaces here, or None when they can (root and a working `ip netns`)."""
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


class _Network:
    """One network namespace per machine, each joined by a veth pair to a bridge on the host: machines reach each
    other only over that link, and none reaches another's loopback."""

    def __init__(self, machines: list[str]) -> None:
        tag = os.urandom(2).hex()
        subnet = f"10.213.{int(tag, 16) % 200 + 20}"
        self.bridge = f"fsb{tag}"
        self.namespaces = {machine: f"fs{tag}-{machine}" for machine in machines}
        self.addresses = {machine: f"{subnet}.{10 + i}" for i, machine in enumerate(machines)}
        self._links = {machine: f"fsv{tag}{i}" for i, machine in enumerate(machines)}

    def prefix(self, machine: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespaces[machine]]

    def __enter__(self) -> _Network:
        commands = [["ip", "link", "add", self.bridge, "type", "bridge"], ["ip", "link", "set", self.bridge, "up"]]
        for machine, namespace in self.namespaces.items():
            link = self._links[machine]
            commands += [["ip", "netns", "add", namespace],
                         ["ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", namespace],
                         ["ip", "link", "set", link, "master", self.bridge], ["ip", "link", "set", link, "up"],
                         ["ip", "-n", namespace, "addr", "add", f"{self.addresses[machine]}/24", "dev", "eth0"],
                         ["ip", "-n", namespace, "link", "set", "eth0", "up"],
                         ["ip", "-n", namespace, "link", "set", "lo", "up"]]
        try:
            for command in commands:
                subprocess.run(command, check=True, capture_output=True, text=True)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for namespace in self.namespaces.values():
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)


EVIL_APP = '''\
[project]
name = "evil"
version = "1.0.0"
dependencies = []

[tool.flwr.app]
publisher = "outsider"

[tool.flwr.app.components]
serverapp = "evil:server"
clientapp = "evil:client"
'''

# What a machine holding a client machine's files can send straight to the proxy (node-0's client certificate):
# the Control and Runtime APIs, directly and through path tricks, and Flower's own node registration.
RAW_ATTEMPTS = r'''
import http.client, json, ssl, sys
host, port, ca, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
context = ssl.create_default_context(cafile=ca)
context.load_cert_chain(cert, key)
paths = ["/v1/control/list-runs", "/v1/control/start-run", "/v1/control/register-node", "/v1/control/list-nodes",
         "/v1/runtime/acquire-task", "/v1/runtime/pull-task-input", "/docs", "/openapi.json", "/health",
         "/v1/fleet/../control/list-runs", "/v1/fleet/%2e%2e/control/list-runs", "/v1/fleet/..%2fcontrol/list-runs",
         "//v1/control/list-runs", "/v1/fleet/x/../../control/start-run", "/V1/CONTROL/LIST-RUNS"]
statuses = {}
for path in paths:
    connection = http.client.HTTPSConnection(host, port, context=context, timeout=10)
    connection.request("POST", path, body=b"", headers={"content-type": "application/protobuf"})
    statuses[path] = connection.getresponse().status
    connection.close()
from fedsim.deploy.supernode import with_client_certificate
with_client_certificate(cert, key)
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.proto.fleet_pb2 import RegisterNodeFleetRequest
from flwr.supercore.primitives.asymmetric import public_key_to_bytes
from flwr.supernode.fleet_http_client import FleetHttpClient
from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor
private = ec.generate_private_key(ec.SECP384R1())
client = FleetHttpClient.from_server_address(f"{host}:{port}", False, ca,
                                             [NodeAuthHttpInterceptor(private, private.public_key())])
try:
    client.RegisterNode(RegisterNodeFleetRequest(public_key=public_key_to_bytes(private.public_key())))
    statuses["fleet register-node"] = 200
except Exception as error:
    statuses["fleet register-node"] = getattr(getattr(error, "response", None), "status_code", repr(error))
print(json.dumps(statuses))
'''


def test_only_the_operator_controls_the_federation(tmp_path, monkeypatch):
    """The README's multi-machine setup, each machine in its own network namespace: the server (SuperLink on its
    loopback, the proxy on its address), 3 client machines, a rogue node and an outsider.

    Holding only `ca.crt`, the outsider's `flwr supernode register`, `flwr ls` and `flwr run` are refused, through
    the proxy and at the SuperLink's port; holding everything client machine 0 holds, it still reaches no API but the
    Fleet API's, where Flower refuses to register its key. No code of the outsider runs anywhere, and the operator
    sees only its own runs and nodes. A fourth node that the operator did register (as node-3) but that claims
    partition 0 is refused and never trains; node 1 is told to scale its update by 1000 and is rejected every round
    by the default bound. The run gives the metrics of the simulation with the same misbehaving node."""
    reason = _netns_unavailable()
    if reason is not None:
        pytest.skip(reason)
    overrides = [*COMMON, "num_rounds=2", "strategy=fedavg", "fraction_evaluate=1.0"]
    node_configs = [{"partition-id": i, "num-partitions": NODES, **({"misbehave": "scale"} if i == 1 else {})}
                    for i in range(NODES)]
    machines = ["server", *[f"node{i}" for i in range(NODES)], "rogue", "outsider"]
    with _Network(machines) as network, LocalFederation(
        tmp_path / "federation", NODES, node_configs=node_configs, say=lambda line: None,
        host=network.addresses["server"],
        node_prefix=lambda i: network.prefix(f"node{i}"), server_prefix=network.prefix("server"),
    ) as running:
        assert running.credentials is not None and running.layout is not None
        server = network.addresses["server"]
        proxy_port, superlink_port = running.layout.listen_port, running.layout.superlink_port
        (rogue,) = add_nodes(running.credentials.folder, 1)
        running.register(rogue)  # the operator's mistake: a fourth node, registered as node-3
        running.start_supernode(0, node=rogue, node_config={"partition-id": 0, "num-partitions": NODES}, name="rogue",
                                prefix=network.prefix("rogue"))
        _wait_for(lambda: _online(running) == NODES + 1, 120, "the rogue node to come online")

        outsider = tmp_path / "outsider"
        (outsider / "evil").mkdir(parents=True)
        (outsider / "ca.crt").write_bytes(running.credentials.ca_cert.read_bytes())
        marker = tmp_path / "outsider-code-ran"
        (outsider / "evil" / "pyproject.toml").write_text(EVIL_APP)
        (outsider / "evil" / "evil.py").write_text("from pathlib import Path\n"
                                                   f"Path({str(marker)!r}).write_text('ran')\n"
                                                   "from flwr.serverapp import ServerApp\n"
                                                   "from flwr.clientapp import ClientApp\n"
                                                   "server, client = ServerApp(), ClientApp()\n")
        own = make_certificates(tmp_path / "outsider-keys", 1).nodes[0]  # a key pair and certificates from its own CA
        home = outsider / "flwr-home"
        home.mkdir()
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "proxy"\n\n[superlink.proxy]\naddress = "{server}:{proxy_port}"\n'
            f'root-certificates = "{outsider / "ca.crt"}"\n\n'
            f'[superlink.direct]\naddress = "{server}:{superlink_port}"\n'
            f'root-certificates = "{outsider / "ca.crt"}"\n')
        as_outsider = {"prefix": network.prefix("outsider"), "env": {"FLWR_HOME": str(home)}, "timeout": 90}
        for connection in ("proxy", "direct"):
            registered = running.flwr("supernode", "register", str(own.auth_public_key), connection, "--format", "json",
                                      **as_outsider)
            listed = running.flwr("ls", connection, "--format", "json", **as_outsider)
            submitted = running.flwr("run", str(outsider / "evil"), connection, "--format", "json", **as_outsider)
            for attempt in (registered, listed, submitted):
                assert '"success": true' not in attempt.stdout and "Successfully" not in attempt.stdout, attempt.stdout
        direct = subprocess.run([*network.prefix("outsider"), sys.executable, "-c",
                                 f"import socket; socket.create_connection(({server!r}, {superlink_port}), timeout=3)"],
                                capture_output=True, text=True, check=False)
        assert direct.returncode != 0  # the SuperLink listens on the server's loopback only

        node0 = running.credentials.nodes[0]
        raw = subprocess.run([*network.prefix("outsider"), sys.executable, "-c", RAW_ATTEMPTS, server, str(proxy_port),
                              str(node0.ca_cert), str(node0.client_cert), str(node0.client_key)],
                             capture_output=True, text=True, timeout=120, check=False)
        assert raw.returncode == 0, raw.stderr[-3000:]
        statuses = json.loads(raw.stdout.strip().splitlines()[-1])
        assert all(status == 403 for path, status in statuses.items() if path != "fleet register-node"), statuses
        assert statuses["fleet register-node"] not in (200, "200"), statuses
        assert int(statuses["fleet register-node"]) >= 400, statuses

        summary = running.submit(overrides, tmp_path / "deployed", timeout=RUN_TIMEOUT)
        assert not marker.exists()
        runs = json.loads(running.flwr("ls", "--format", "json").stdout)["runs"]
        assert [run["fab-name"] for run in runs] == ["fedsim"], runs  # the operator's run, and no other
        nodes = json.loads(running.flwr("supernode", "ls", "--format", "json").stdout)["nodes"]
        assert len(nodes) == NODES + 1, nodes  # the operator's registrations, and no other
        for i in range(NODES):  # the nodes really live apart: the server's loopback SuperLink port is not theirs
            code = f"import socket; socket.create_connection(('127.0.0.1', {superlink_port}), timeout=2)"
            probe = subprocess.run([*network.prefix(f"node{i}"), sys.executable, "-c", code],
                                   capture_output=True, text=True, check=False)
            assert probe.returncode != 0
    with open(tmp_path / "deployed" / "nodes.csv", newline="") as stream:
        seen = list(csv.DictReader(stream))
    refused = [row for row in seen if row["status"] == "refused"]
    assert [row["partition"] for row in refused] == ["0"] and "registered as node-3" in refused[0]["reason"], seen
    assert sorted(row["partition"] for row in seen if row["status"] == "accepted") == ["0", "1", "2"]
    with open(tmp_path / "deployed" / "rejections.csv", newline="") as stream:
        rejections = list(csv.DictReader(stream))
    assert [(row["round"], row["partition"], row["kind"]) for row in rejections] == [("1", "1", "train"),
                                                                                     ("2", "1", "train")]

    give_nodes_config(monkeypatch, {1: {"misbehave": "scale"}})  # the same misbehaving node, simulated
    simulated = _simulate(overrides, tmp_path / "simulated")
    _assert_same_run(tmp_path / "deployed", simulated)
    assert _close(summary["final_accuracy"], json.loads((simulated / "summary.json").read_text())["final_accuracy"])
    assert summary["final_accuracy"] > 0.5  # 2 rounds on 2 of 3 clients; the accepted attack leaves ~0.1


# --- the systemd units of docs/deploy, run as systemd would ----------------------------------------------------------

UNITS = Path(__file__).resolve().parents[1] / "docs" / "deploy"


def _service(unit: Path) -> dict[str, str]:
    import configparser

    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # keys are case-sensitive in systemd
    parser.read(unit)
    return dict(parser["Service"])


def _exec_start(service: dict[str, str], environment: dict[str, str], paths: dict[str, list[str]]) -> list[str]:
    """ExecStart as systemd runs it: `${NAME}` becomes one word from the environment; then the test's own paths take
    the place of the unit's install paths."""
    import shlex

    words = [environment[word[2:-1]] if word.startswith("${") and word.endswith("}") else word
             for word in shlex.split(service["ExecStart"])]
    return [part for word in words for part in paths.get(word, [word])]


def test_the_systemd_units_run_a_federation_and_stop_cleanly(tmp_path):
    """docs/deploy's units, their ExecStart run as systemd would (each machine in its own network namespace, one
    process each, the EnvironmentFile read): the nodes connect, the operator registers them and runs an experiment
    from the server; `systemctl reload` (SIGHUP) keeps the server up, `systemctl stop` (SIGTERM) leaves nothing."""
    reason = _netns_unavailable()
    if reason is not None:
        pytest.skip(reason)
    from fedsim.deploy.processes import ProcessSet

    server_unit, node_unit = _service(UNITS / "fedsim-server.service"), _service(UNITS / "fedsim-node.service")
    assert server_unit["ExecReload"] == "/bin/kill -HUP $MAINPID" and server_unit["KillMode"] == "control-group"
    assert node_unit["EnvironmentFile"] == "/etc/fedsim/node.env"
    nodes = 2
    overrides = ["num_clients=2", "num_rounds=2", "seed=2", "progress=false", "fraction_evaluate=0"]
    fedsim = [sys.executable, "-m", "fedsim.cli"]
    with _Network(["server", "node0", "node1"]) as network:
        server = network.addresses["server"]
        credentials = make_certificates(tmp_path / "certs", nodes, (server,))
        (tmp_path / "certs" / "ca.key").unlink()  # the server runs without the CA's key, as the unit's comment says
        processes = ProcessSet(tmp_path / "logs")
        try:
            state = tmp_path / "state"
            command = _exec_start(server_unit, {}, {"/opt/fedsim/.venv/bin/fedsim": fedsim,
                                                    "/etc/fedsim/certs": [str(credentials.folder)],
                                                    "/var/lib/fedsim": [str(state)]})
            main = processes.start("server", [*network.prefix("server"), *command], cwd=tmp_path)
            home = tmp_path / "operator"
            home.mkdir()
            (home / "config.toml").write_text('[superlink]\ndefault = "fedsim"\n\n'
                                              '[superlink.fedsim]\naddress = "127.0.0.1:9091"\n'
                                              f'root-certificates = "{credentials.ca_cert}"\n')
            from fedsim.deploy.processes import flower_command

            def operator(*args: str, **kwargs) -> subprocess.CompletedProcess:
                return subprocess.run([*network.prefix("server"), *flower_command("flwr"), *args], capture_output=True,
                                      text=True, env=processes.environment({"FLWR_HOME": str(home)}), cwd=tmp_path,
                                      timeout=kwargs.get("timeout", 120), check=False)

            _wait_for(lambda: '"success": true' in operator("ls", "--format", "json").stdout, 120, "the SuperLink")
            for node in credentials.nodes:
                registered = operator("supernode", "register", str(node.auth_public_key), "fedsim", "--name", node.name)
                assert registered.returncode == 0
                env_file = tmp_path / f"{node.name}.env"
                env_file.write_text(f"FEDSIM_SUPERLINK={server}:9093\n"
                                    f"FEDSIM_NODE_CONFIG=partition-id={node.index} num-partitions={nodes}\n")
                environment = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
                command = _exec_start(node_unit, environment, {"/opt/fedsim/.venv/bin/fedsim": fedsim,
                                                               "/etc/fedsim/node": [str(node.folder)]})
                processes.start(node.name, [*network.prefix(f"node{node.index}"), *command], cwd=tmp_path)
            _wait_for(lambda: operator("supernode", "ls", "--format", "json").stdout.count('"online"') == nodes, 120,
                      "the nodes")

            main.send_signal(signal.SIGHUP)  # systemctl reload
            app = tmp_path / "app"
            built = subprocess.run([*fedsim, "deploy", "app", str(app)], capture_output=True, check=False)
            assert built.returncode == 0
            run_dir = tmp_path / "run"
            config = tmp_path / "run.toml"
            config.write_text(f'overrides = "{" ".join(overrides)}"\nrun-dir = "{run_dir}"\n')
            submitted = operator("run", str(app), "fedsim", "--run-config", str(config), "--stream",
                                 timeout=RUN_TIMEOUT)
            assert (run_dir / "summary.json").exists(), (submitted.stdout + submitted.stderr)[-3000:]
            assert main.poll() is None
            group = processes.all_pids()  # every process of the units: what KillMode=control-group would reach
            for process in processes.processes.values():  # systemctl stop: SIGTERM to the main process
                process.send_signal(signal.SIGTERM)
            for name, process in processes.processes.items():
                assert process.wait(timeout=40) is not None, name
            time.sleep(1)
            survivors = {pid for pid in group if Path(f"/proc/{pid}").exists()
                         and "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()}
            assert not survivors, f"the units left processes behind: {survivors}"
        finally:
            processes.stop()
    _assert_same_run(run_dir, _simulate(overrides, tmp_path / "simulated"), nodes=nodes)

