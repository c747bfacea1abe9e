"""The deployment's pieces, without starting Flower: the proxy's configuration (checked by nginx itself), a run
folder that must not be overwritten, the prompt Grid, the SuperNode's pacing, and the operator's one-line errors."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from flwr.app import Message, MessageType, RecordDict

from fedsim.cli import main
from fedsim.config import compose_experiment, resolve_auto_values
from fedsim.deploy.certs import make_certificates
from fedsim.deploy.commands import check_memory
from fedsim.deploy.grid import PromptGrid
from fedsim.deploy.pacing import (
    SQLITE_BUSY_TIMEOUT_MS,
    TASK_HEARTBEAT_PATIENCE,
    NodePacing,
    keep_task_tokens_longer,
    wait_longer_for_sqlite_locks,
)
from fedsim.deploy.proxy import ProxySettings, server_block, standalone_config
from fedsim.deploy.server_app import existing_run
from fedsim.errors import DeployError, FedsimError
from fedsim.recorder import Recorder, RoundRecord

from .conftest import messages_to

# --- the proxy ---------------------------------------------------------------------------------------------------

def test_the_proxy_passes_only_the_fleet_api_and_requires_client_certificates(tmp_path):
    credentials = make_certificates(tmp_path / "certs", 1)
    block = server_block(ProxySettings("0.0.0.0", 9093, 9091, credentials))
    assert "ssl_verify_client on;" in block and f"ssl_crl {credentials.crl.resolve()};" in block
    assert f"ssl_client_certificate {credentials.ca_cert.resolve()};" in block
    locations = [line.strip() for line in block.splitlines() if line.strip().startswith("location")]
    assert locations == ["location ~ ^/v1/fleet/[a-z-]+$ {", "location / {"]
    assert "return 403;" in block.split("location / {")[1]
    assert "proxy_ssl_verify on;" in block and "server 127.0.0.1:9091;" in block


@pytest.mark.skipif(shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
                    reason="nginx is not installed")
def test_nginx_accepts_the_generated_configuration(tmp_path):
    credentials = make_certificates(tmp_path / "certs", 1)
    folder = tmp_path / "proxy"
    (folder / "temp").mkdir(parents=True)
    config = folder / "nginx.conf"
    config.write_text(standalone_config(ProxySettings("127.0.0.1", 9093, 9091, credentials), folder))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    checked = subprocess.run([nginx, "-t", "-e", "stderr", "-p", str(folder), "-c", str(config)], capture_output=True,
                             text=True, check=False)
    assert checked.returncode == 0, checked.stderr


NGINX_PRESENT = shutil.which("nginx") is not None or Path("/usr/sbin/nginx").exists()


class _Upstream:
    """A stand-in SuperLink on loopback (TLS, the server certificate): answers every POST with `answer` bytes."""

    def __init__(self, credentials, answer: int) -> None:
        import ssl
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802  (http.server's name)
                self.rfile.read(int(self.headers["content-length"]))
                self.send_response(200)
                self.send_header("content-length", str(answer))
                self.end_headers()
                self.wfile.write(b"a" * answer)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(credentials.server_cert, credentials.server_key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.mark.skipif(not NGINX_PRESENT, reason="nginx is not installed")
def test_the_proxy_logs_each_fleet_request_with_the_sizes_of_its_bodies(tmp_path):
    """Real nginx before a stand-in SuperLink: a node's Fleet calls are logged, one tab-separated line each with the
    client certificate and both bodies' sizes; a refused call outside the Fleet API is not a Fleet request."""
    import http.client
    import ssl
    import time

    from fedsim.deploy.processes import free_port
    from fedsim.deploy.proxy import ACCESS_LOG, nginx_command, write_standalone_config
    from fedsim.deploy.wire_log import FleetRequest, read_requests

    credentials = make_certificates(tmp_path / "certs", 1)
    upstream = _Upstream(credentials, answer=5000)
    port = free_port("127.0.0.1")
    config = write_standalone_config(ProxySettings("127.0.0.1", port, upstream.port, credentials), tmp_path / "proxy")
    proxy = subprocess.Popen(nginx_command(config), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        node = credentials.nodes[0]
        context = ssl.create_default_context(cafile=str(node.ca_cert))
        context.load_cert_chain(node.client_cert, node.client_key)
        statuses = []
        calls = (("/v1/fleet/push-object", 1234), ("/v1/control/list-runs", 10), ("/v1/fleet/pull-object", 89))
        for path, body in calls:
            for _ in range(50):  # nginx takes a moment to listen
                try:
                    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
                    connection.request("POST", path, body=b"b" * body)
                    break
                except ConnectionRefusedError:
                    time.sleep(0.05)
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
            connection.close()
        assert statuses == [200, 403, 200]
        log = tmp_path / "proxy" / ACCESS_LOG
        for _ in range(50):  # each line is written as its request ends
            requests = read_requests(log) if log.exists() else []
            if len(requests) == 2:
                break
            time.sleep(0.05)
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
    assert [(r.client, r.method, r.status, r.request_body, r.response_body) for r in requests] == [
        ("CN=node-0,O=fedsim", "push-object", 200, 1234, 5000), ("CN=node-0,O=fedsim", "pull-object", 200, 89, 5000)]
    assert all(isinstance(r, FleetRequest) and r.request_total > r.request_body and r.response_total > 5000
               for r in requests)


def test_the_objects_inside_fleet_bodies_are_their_size_less_the_protobuf_envelope():
    """Bodies made by Flower's own protobuf messages: a pull's content is exact, a push's exact once the ids' size
    is known (here from the same node's pull-object request), within 18 bytes otherwise (two ids of 1 to 10 varint
    bytes each)."""
    from flwr.proto.message_pb2 import PullObjectRequest, PullObjectResponse, PushObjectRequest
    from flwr.proto.node_pb2 import Node

    from fedsim.deploy.wire_log import (
        FleetRequest,
        ObjectTraffic,
        downloaded_objects,
        pulled_content,
        pushed_content,
        uploaded_objects,
    )

    node, run, object_id, session = Node(node_id=2**64 - 1), 1, "f" * 64, "0" * 36  # a 10-byte and a 1-byte varint
    push = PushObjectRequest(node=node, run_id=run, object_id=object_id, object_content=b"x" * 300,
                             session_id=session).SerializeToString()
    assert len(push) == 109 + 10 + 1 + 2 + 300  # fixed fields, the two ids, the content's length (2 bytes) and itself
    assert pushed_content(len(push), (11, 11)) == (300, 300)
    least, most = pushed_content(len(push))
    assert least <= 300 <= most and most - least == 18
    pull_request = PullObjectRequest(node=node, run_id=run, object_id=object_id).SerializeToString()
    pulled = PullObjectResponse(object_found=True, object_available=True, object_content=b"y" * 127).SerializeToString()
    assert len(pull_request) == 70 + 11 and len(pulled) == 5 + 1 + 127 and pulled_content(len(pulled)) == 127
    unavailable = PullObjectResponse(object_found=True).SerializeToString()
    assert pulled_content(len(unavailable)) == 0 and pulled_content(0) == 0

    def request(method: str, sent: int, received: int) -> FleetRequest:
        return FleetRequest(0.0, "CN=node-0,O=fedsim", method, 200, sent, sent + 800, received, received + 150)

    lines = [request("pull-object", len(pull_request), len(pulled)), request("pull-object", len(pull_request), 2),
             request("push-object", len(push), 2), request("pull-messages", 13, 0)]
    assert uploaded_objects(lines) == ObjectTraffic(1, len(push), 300, 300)
    assert downloaded_objects(lines) == ObjectTraffic(1, len(pulled), 127, 127)


# --- a run folder is never overwritten -----------------------------------------------------------------------------

def _experiment(*overrides: str) -> dict:
    return compose_experiment(["num_clients=3", "num_rounds=2", *overrides])


def _started_run(folder: Path, experiment: dict, rounds: int, checkpoint: bool) -> None:
    recorder = Recorder(folder, resolve_auto_values(experiment), 3, {})
    for server_round in range(rounds + 1):
        recorder.record_round(RoundRecord(server_round, 0.5, 1.0))
    if checkpoint:
        from types import SimpleNamespace

        from flwr.app import ArrayRecord

        from fedsim.checkpoint import capture, save_checkpoint

        save_checkpoint(folder, capture(rounds, ArrayRecord(), SimpleNamespace(), recorder.state(), None))


def test_an_empty_or_new_run_dir_starts_at_round_one(tmp_path):
    assert existing_run(tmp_path / "new", _experiment()) is False
    _started_run(tmp_path / "started", _experiment(), 0, checkpoint=False)  # killed before round 1 ended
    assert existing_run(tmp_path / "started", _experiment()) is False


def test_an_interrupted_run_of_the_same_experiment_continues(tmp_path):
    _started_run(tmp_path, _experiment(), 1, checkpoint=True)
    assert existing_run(tmp_path, _experiment()) is True


@pytest.mark.parametrize(("state", "message"), [
    ("finished", "already holds a finished run"),
    ("other experiment", r"holds a run of another experiment \(it differs in partition.seed, seed, strategy.seed\)"),
    ("rounds without checkpoint", "has 1 finished round but no checkpoint"),
])
def test_a_run_dir_that_must_not_be_overwritten_is_refused_in_one_line(tmp_path, state, message):
    _started_run(tmp_path, _experiment(), 1, checkpoint=state != "rounds without checkpoint")
    if state == "finished":
        (tmp_path / "summary.json").write_text(json.dumps({"complete": True}))
    wanted = _experiment("seed=7") if state == "other experiment" else _experiment()
    before = (tmp_path / "metrics.csv").read_bytes()
    with pytest.raises(FedsimError, match=message) as error:
        existing_run(tmp_path, wanted)
    assert "\n" not in str(error.value)
    assert (tmp_path / "metrics.csv").read_bytes() == before


# --- the prompt Grid -----------------------------------------------------------------------------------------------

class _SlowRepliesGrid:
    """Flower's Grid as PromptGrid sees it: replies become available `delays` seconds after the push."""

    def __init__(self, delays: list[float]) -> None:
        self.delays = delays
        self.pulls = 0
        self.pushed_at = 0.0
        self.messages: list[Message] = []

    def push_messages(self, messages):
        import time

        self.pushed_at = time.monotonic()
        self.messages = list(messages)
        for index, message in enumerate(self.messages):
            message.metadata.__dict__["_message_id"] = f"m{index}"
        return [message.metadata.message_id for message in self.messages]

    def pull_messages(self, message_ids):
        import time

        self.pulls += 1
        waited = time.monotonic() - self.pushed_at
        ready = [m for m, delay in zip(self.messages, self.delays, strict=True)
                 if delay <= waited and m.metadata.message_id in set(message_ids)]
        return [Message(RecordDict(), reply_to=m) for m in ready]


def test_prompt_grid_collects_replies_soon_after_they_arrive():
    import time

    inner = _SlowRepliesGrid([0.05, 0.3])
    started = time.monotonic()
    replies = PromptGrid(inner).send_and_receive(messages_to([1, 2], MessageType.QUERY), timeout=10)
    took = time.monotonic() - started
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1"]
    assert 0.3 <= took < 0.3 + 0.25  # Flower's own Grid looks every 3 s
    assert inner.pulls < 20


def test_prompt_grid_gives_up_at_the_timeout_with_what_arrived():
    import time

    inner = _SlowRepliesGrid([0.0, 60.0])
    started = time.monotonic()
    replies = PromptGrid(inner).send_and_receive(messages_to([1, 2], MessageType.QUERY), timeout=0.4)
    assert [r.metadata.reply_to_message_id for r in replies] == ["m0"]
    assert 0.4 <= time.monotonic() - started < 0.6


# --- the SuperNode's pacing -------------------------------------------------------------------------------------

class _Clock:
    def __init__(self) -> None:
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


def test_node_pacing_backs_off_when_idle_and_is_prompt_while_busy():
    clock = _Clock()
    pacing = NodePacing(floor=0.05, ceiling=0.2, busy=0.01, clock=clock)
    for _ in range(5):
        pacing.sleep(3)  # Flower's loop after an empty pull
    pacing.sleep(0.5)  # waiting for a ClientApp reply
    pacing.sleep(3)
    assert clock.slept == pytest.approx([0.05, 0.075, 0.1125, 0.16875, 0.2, 0.01, 0.05])


def test_the_superlink_waits_longer_for_sqlite_locks_than_flower_does(tmp_path, monkeypatch):
    """A connection Flower opens after `wait_longer_for_sqlite_locks` really has the longer busy timeout."""
    import sqlite3

    from flwr.supercore import sql_mixin

    monkeypatch.setattr(sql_mixin, "SQLITE_PRAGMAS", sql_mixin.SQLITE_PRAGMAS)  # restored after the test

    def busy_timeout() -> int:
        connection = sqlite3.connect(tmp_path / "state.db")
        sql_mixin._set_sqlite_pragmas(connection, None)  # pylint: disable=protected-access
        return connection.execute("PRAGMA busy_timeout").fetchone()[0]

    assert busy_timeout() == 5000  # Flower's
    wait_longer_for_sqlite_locks()
    assert busy_timeout() == SQLITE_BUSY_TIMEOUT_MS == 60_000
    assert dict(sql_mixin.SQLITE_PRAGMAS)["journal_mode"] == "WAL"  # the other pragmas stay


def test_task_tokens_outlive_more_missed_heartbeats_but_node_heartbeats_keep_flowers_patience(monkeypatch):
    from flwr.server.superlink.linkstate import sql_linkstate
    from flwr.supercore.corestate import sql_corestate

    monkeypatch.setattr(sql_corestate, "HEARTBEAT_PATIENCE", sql_corestate.HEARTBEAT_PATIENCE)  # restored after
    keep_task_tokens_longer()
    assert sql_corestate.HEARTBEAT_PATIENCE == TASK_HEARTBEAT_PATIENCE == 10
    assert sql_linkstate.HEARTBEAT_PATIENCE == 2


# --- operator mistakes ------------------------------------------------------------------------------------------

def test_too_many_local_nodes_for_the_memory_is_one_line():
    check_memory(10, available_gib=20.0)
    with pytest.raises(DeployError, match=r"--nodes 100 needs about 60 GiB .* 20.0 GiB available"):
        check_memory(100, available_gib=20.0)


@pytest.mark.parametrize(("args", "message"), [
    (["deploy", "node", "--superlink", "127.0.0.1:9"], "needs --credentials"),
    (["deploy", "node", "--superlink", "nohost"], "is not HOST:PORT"),
    (["deploy", "node", "--superlink", "127.0.0.1:9", "--isolation", "subprocess"], "leave out --isolation"),
    (["deploy", "server"], "needs --certs DIR"),
    (["deploy", "server", "--certs", "/nonexistent"], "has no ca.crt"),
    (["deploy", "frobnicate"], "usage: fedsim deploy local"),
    (["deploy", "local", "--nodes", "2", "--bogus"], "unknown option --bogus"),
])
def test_deploy_command_mistakes_are_one_line(capsys, args, message):
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_a_node_key_readable_by_others_is_refused(tmp_path, capsys):
    node = make_certificates(tmp_path, 1).nodes[0]
    node.auth_key.chmod(0o644)
    with pytest.raises(SystemExit):
        main(["deploy", "node", "--superlink", "127.0.0.1:9", "--credentials", str(node.folder)])
    assert f"chmod 600 {node.auth_key}" in capsys.readouterr().err


def test_resuming_a_deployed_run_without_its_superlink_refuses_and_never_simulates(tmp_path, capsys, monkeypatch):
    """The run folder stays as it was: no round is run here, as a simulation or otherwise."""
    run = tmp_path / "run"
    _started_run(run, _experiment(), 1, checkpoint=True)
    (run / "deployment.json").write_text(json.dumps({"overrides": ["num_clients=3", "num_rounds=2"],
                                                     "run_dir": str(run), "flower_run_ids": [1]}))
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text('[superlink]\ndefault = "gone"\n\n'
                                      '[superlink.gone]\naddress = "127.0.0.1:9"\ninsecure = true\n')
    monkeypatch.setenv("FLWR_HOME", str(home))
    before = {path.name: path.read_bytes() for path in run.iterdir()}
    with pytest.raises(SystemExit) as stop:
        main(["resume", str(run)])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "cannot reach the federation's SuperLink" in err and "continues only on its federation" in err
    assert {path.name: path.read_bytes() for path in run.iterdir()} == before
    with open(run / "metrics.csv", newline="") as stream:
        assert [row["round"] for row in csv.DictReader(stream)] == ["0", "1"]
