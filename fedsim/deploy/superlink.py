"""The server machine's processes: the SuperLink on loopback, with its state on disk, and the proxy in front of it.

`fedsim deploy server` and `fedsim deploy local` both start them from here, so the hardened setup the README
documents is the one the tests run:

- `flower-superlink --host 127.0.0.1 --port <superlink_port>` with TLS, SuperNode authentication and
  `--database <state>/superlink.db` (registered nodes, runs and messages survive a restart; in-memory state would
  make every SuperNode exit once the SuperLink comes back);
- nginx on `<listen_host>:<listen_port>` (`fedsim.deploy.proxy`): the only port client machines reach.

`--insecure` (trusted networks, debugging) drops TLS, authentication and the proxy: the SuperLink itself then
listens on the public address.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import DeployError
from .certs import Credentials
from .processes import ProcessSet
from .proxy import ProxySettings, nginx_command, write_standalone_config

STARTUP_TIMEOUT = 120.0
SUPERLINK_HOST = "127.0.0.1"
DATABASE_FILE = "superlink.db"


class ServerError(DeployError):
    """The SuperLink or the proxy did not start; the message says why and where the log is."""


@dataclass(frozen=True)
class ServerLayout:
    """What the server machine runs, and where it keeps its state."""

    state_dir: Path
    credentials: Credentials | None  # None: --insecure
    listen_host: str = "0.0.0.0"
    listen_port: int = 9093
    superlink_port: int = 9091

    @property
    def database(self) -> Path:
        return self.state_dir / DATABASE_FILE

    @property
    def proxy_dir(self) -> Path:
        return self.state_dir / "proxy"

    @property
    def control_address(self) -> str:
        """Where the operator's `flwr` reaches the SuperLink (the Control API): the server's loopback."""
        if self.credentials is not None:
            return f"{SUPERLINK_HOST}:{self.superlink_port}"
        return f"{self.listen_host}:{self.listen_port}"

    def superlink_command(self) -> list[str]:
        if self.credentials is None:
            return ["flower-superlink", "--insecure", "--host", self.listen_host, "--port", str(self.listen_port),
                    "--database", str(self.database), "--disable-runtime-dependency-installation"]
        certs = self.credentials
        return ["flower-superlink", "--host", SUPERLINK_HOST, "--port", str(self.superlink_port),
                "--ssl-certfile", str(certs.server_cert), "--ssl-keyfile", str(certs.server_key),
                "--ssl-ca-certfile", str(certs.ca_cert), "--enable-supernode-auth",
                "--database", str(self.database), "--disable-runtime-dependency-installation"]


def listening(host: str, port: int, prefix: tuple[str, ...] = ()) -> bool:
    """Whether something accepts TCP connections at host:port, seen from where `prefix` runs commands (e.g. inside
    a network namespace)."""
    if prefix:
        code = f"import socket; socket.create_connection(({host!r}, {port}), timeout=0.5)"
        probe = subprocess.run([*prefix, sys.executable, "-S", "-c", code], capture_output=True, check=False)
        return probe.returncode == 0
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _last_lines(path: Path, count: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-count:])
    except OSError:
        return "(no log)"


def wait_until_listening(processes: ProcessSet, name: str, host: str, port: int, what: str,  # pylint: disable=too-many-arguments
                         prefix: tuple[str, ...] = ()) -> None:
    """Wait for `name` to accept connections; a process that exits or hangs is a one-line error plus its log tail."""
    process = processes.processes[name]
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not listening(host, port, prefix):
        if process.poll() is not None or time.monotonic() > deadline:
            log = processes.log_path(name)
            raise ServerError(f"{what} did not start on {host}:{port} (log {log}):\n{_last_lines(log)}")
        time.sleep(0.2)


def start_server(processes: ProcessSet, layout: ServerLayout, shim: Path | None = None,
                 prefix: tuple[str, ...] = ()) -> None:
    """Start the SuperLink and, unless insecure, the proxy; return once both accept connections.

    `shim`: a folder of Flower console-script wrappers to run them with (see `processes.write_flower_shims`);
    `prefix`: a command to run both under (tests put the server in a network namespace with `ip netns exec`).
    """
    layout.state_dir.mkdir(parents=True, exist_ok=True)
    command = layout.superlink_command()
    if shim is not None:
        command[0] = str(shim / command[0])
    processes.start("superlink", [*prefix, *command], cwd=layout.state_dir)
    check_host = SUPERLINK_HOST if layout.credentials is not None else _reachable(layout.listen_host)
    check_port = layout.superlink_port if layout.credentials is not None else layout.listen_port
    wait_until_listening(processes, "superlink", check_host, check_port, "the SuperLink", prefix)
    if layout.credentials is None:
        return
    settings = ProxySettings(layout.listen_host, layout.listen_port, layout.superlink_port, layout.credentials)
    config = write_standalone_config(settings, layout.proxy_dir)
    processes.start("proxy", [*prefix, *nginx_command(config)], cwd=layout.proxy_dir)
    wait_until_listening(processes, "proxy", _reachable(layout.listen_host), layout.listen_port, "the proxy (nginx)",
                         prefix)


def _reachable(host: str) -> str:
    """An address to probe a server listening on `host` (a wildcard is probed on loopback)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
