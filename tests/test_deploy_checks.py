"""The deployment's one-line errors, each on the side where it happens, without starting Flower: a SuperNode's
preflight against a stand-in SuperLink socket, and the ClientApp's answers to a bad node config or foreign data."""

from __future__ import annotations

import socket
import ssl
import threading

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import Context, Message, RecordDict

from fedsim.client import app as client_app
from fedsim.config import compose_experiment, resolve_auto_values
from fedsim.deploy.certs import make_certificates
from fedsim.deploy.local_federation import DeployError, federation_overrides
from fedsim.deploy.preflight import check_superlink
from fedsim.deploy.server_app import overrides_from_run_config
from fedsim.node_config import node_device

from .conftest import train_message


class _Listener:
    """A loopback socket that accepts connections, does a TLS handshake when given a context, and answers one HTTP
    request with `answer` (what the proxy or the SuperLink would say)."""

    def __init__(self, context: ssl.SSLContext | None, answer: tuple[int, str] = (404, "not found")) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.context = context
        self.answer = answer
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            try:
                if self.context is not None:
                    connection = self.context.wrap_socket(connection, server_side=True)
                request = connection.recv(65536)
                if request.startswith(b"POST"):
                    status, body = self.answer
                    head = f"HTTP/1.1 {status} X\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
                    connection.sendall(f"{head}{body}".encode())
            except (OSError, ssl.SSLError):
                pass
            finally:
                connection.close()


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("certs"), 1)


@pytest.fixture(scope="module")
def tls_link(certs):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs.server_cert, certs.server_key)
    return _Listener(context)


@pytest.fixture(scope="module")
def plain_link():
    return _Listener(None)


def test_a_node_that_trusts_the_right_ca_passes(certs, tls_link):
    check_superlink(f"127.0.0.1:{tls_link.port}", certs.ca_cert, insecure=False)
    check_superlink(f"localhost:{tls_link.port}", certs.ca_cert, insecure=False)


@pytest.mark.parametrize(("answer", "message"), [
    ((400, "<html><center>No required SSL certificate was sent</center></html>"),
     "requires this node's client certificate"),
    ((400, "<html><center>The SSL certificate error</center></html>"), "refused this node's client certificate"),
    ((502, "<html>Bad Gateway</html>"), "the SuperLink behind it does not"),
    ((403, "<html>Forbidden</html>"), "refuses the Fleet API"),
])
def test_the_proxys_answers_are_one_line_on_the_node(certs, answer, message):
    """What nginx answers when it will not pass a node on, told apart from an answer of the SuperLink itself."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs.server_cert, certs.server_key)
    proxy = _Listener(context, answer)
    node = certs.nodes[0]
    with pytest.raises(DeployError, match=message) as error:
        check_superlink(f"127.0.0.1:{proxy.port}", node.ca_cert, False, client_cert=node.client_cert,
                        client_key=node.client_key)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(("case", "message"), [
    ("wrong port", "cannot reach the SuperLink at 127.0.0.1:"),
    ("unknown host", "cannot resolve the SuperLink host"),
    ("insecure node, TLS link", "uses TLS but this node has --insecure"),
    ("TLS node, insecure link", "does not speak TLS"),
    ("other CA", "does not verify against"),
])
def test_link_problems_are_one_line_on_the_node(certs, tls_link, plain_link, tmp_path, case, message):
    other_ca = make_certificates(tmp_path, 0).ca_cert
    address, ca, insecure = {
        "wrong port": (f"127.0.0.1:{_closed_port()}", certs.ca_cert, False),
        "unknown host": ("nosuchhost.invalid:9093", None, True),
        "insecure node, TLS link": (f"127.0.0.1:{tls_link.port}", None, True),
        "TLS node, insecure link": (f"127.0.0.1:{plain_link.port}", certs.ca_cert, False),
        "other CA": (f"127.0.0.1:{tls_link.port}", other_ca, False),
    }[case]
    with pytest.raises(DeployError, match=message) as error:
        check_superlink(address, ca, insecure)
    assert "\n" not in str(error.value)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- the ClientApp on a SuperNode ------------------------------------------------------------------------------

def _experiment(*overrides: str) -> dict:
    return resolve_auto_values(compose_experiment(["num_clients=3", "num_rounds=1", *overrides]))


def _context(node_config: dict) -> Context:
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})


def _error_line(reply: Message) -> str:
    assert reply.has_error()
    return str(reply.error.reason)


def test_a_node_without_partition_id_answers_one_line(capsys):
    reply = client_app(train_message(_experiment()), _context({}))
    line = _error_line(reply)
    assert "no 'partition-id' in its node config" in line and "\n" not in line
    assert line in capsys.readouterr().err  # and says it on the node's own stderr


def test_a_node_outside_the_federation_answers_one_line():
    reply = client_app(train_message(_experiment()), _context({"partition-id": 5, "num-partitions": 6}))
    assert "partition-id=5 is outside this run's 0..2" in _error_line(reply)


def test_a_node_whose_data_does_not_fit_the_model_answers_one_line(tmp_path):
    rows = 40
    frame = pd.DataFrame(np.random.default_rng(0).normal(size=(rows, 5)), columns=[f"f{i}" for i in range(5)])
    frame["label"] = np.arange(rows) % 2
    path = tmp_path / "site.parquet"
    frame.to_parquet(path)
    reply = client_app(train_message(_experiment()), _context({"partition-id": 1, "data-path": str(path)}))
    line = _error_line(reply)
    assert "this node's data (site: input shape [5], 2 classes) does not fit the server's model" in line
    assert "\n" not in line


def test_a_data_path_node_trains_on_its_own_file(tmp_path):
    """A site's own file with the server's shape (64 digit pixels, 10 classes): the node trains on all its rows."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    frame = pd.DataFrame(digits.data[:120] / 16.0, columns=[f"p{i}" for i in range(64)])
    frame["label"] = digits.target[:120]
    path = tmp_path / "site.csv"
    frame.to_csv(path, index=False)
    experiment = _experiment("client.val_fraction=0.25")
    reply = client_app(train_message(experiment), _context({"partition-id": 2, "data-path": str(path)}))
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    assert reply.content["metrics"]["num-examples"] == 90


def test_device_is_resolved_on_the_node():
    experiment = {"device": "auto"}
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert node_device(_context({}), experiment).type == expected
    assert node_device(_context({"device": "cpu"}), {"device": "cuda"}).type == "cpu"


def test_run_config_overrides_and_the_node_count():
    assert overrides_from_run_config({"overrides": "num_rounds=2 'strategy=feddisco'"}) == ["num_rounds=2",
                                                                                         "strategy=feddisco"]
    assert federation_overrides(["num_rounds=2"], 3)[-1] == "num_clients=3"
    with pytest.raises(DeployError, match="num_clients=4 but --nodes 3"):
        federation_overrides(["num_clients=4"], 3)


def test_bad_overrides_in_the_run_config_are_one_line_in_the_run_log(tmp_path, capsys):
    from fedsim.deploy.server_app import run_deployed
    from fedsim.errors import ConfigError

    context = Context(run_id=5, node_id=0, node_config={}, state=RecordDict(),
                      run_config={"overrides": "partition.alpha=0", "run-dir": str(tmp_path / "run")})
    with pytest.raises(ConfigError):
        run_deployed(None, context)  # type: ignore[arg-type]  # fails before it needs a grid
    assert "fedsim: error: partition.alpha=0 is not allowed: a number > 0 or a list" in capsys.readouterr().err
