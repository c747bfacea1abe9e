"""The SuperNode process of `fedsim deploy node`: Flower's `flower-supernode`, with what a hardened, fast node needs.

`fedsim deploy node` checks the link (`fedsim.deploy.preflight`), then replaces itself with `main()` here, which runs
Flower's own SuperNode in this process with three additions:

- **a TLS client certificate.** The server's proxy passes nothing on without one (`fedsim.deploy.proxy`), and Flower
  1.41's SuperNode has no option for it, so its Fleet HTTP client gets an SSL context holding the node's
  `client.crt`/`client.key` (`with_client_certificate`);
- **a warm ClientApp worker.** The SuperNode runs with `--isolation process` and a SuperExec secret only this node
  knows; a child process (`fedsim.deploy.worker`) takes its ClientApp tasks and keeps the ClientApp, torch and the
  data loaded from one message to the next, instead of Flower starting a fresh `flwr-clientapp` per message. A
  watchdog thread restarts the worker if it dies, and the worker stops when this process does;
- **prompt polling and transfers** (`fedsim.deploy.pacing`). Flower's SuperNode waits a fixed 3 s after every empty
  pull, 0.5 s between checks for a finished reply, and 1 s and more before pulling again a message object that is
  still on its way, which costs several seconds per round. Here an empty pull waits 0.05 s (growing by half up to
  1 s while idle), a finished reply is noticed within 10 ms, and object pulls retry after 0.2 s (`pacing.py`).

When the SuperLink refuses to activate the node ("Failed to activate SuperNode"), the node tries again for 90 s (a
SuperNode with the same key that stopped less than a minute ago still counts as online, as after a quick restart),
then says in one line what to run on the server.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .pacing import pace_supernode

CLIENT_CERT_VARIABLE = "FEDSIM_NODE_CLIENT_CERT"
CLIENT_KEY_VARIABLE = "FEDSIM_NODE_CLIENT_KEY"
NODE_NAME_VARIABLE = "FEDSIM_NODE_NAME"
PUBLIC_KEY_VARIABLE = "FEDSIM_NODE_PUBLIC_KEY"
RETRY_VARIABLE = "FEDSIM_NODE_RETRY"
ACTIVATION_DEADLINE_VARIABLE = "FEDSIM_NODE_ACTIVATION_DEADLINE"
ACTIVATION_PATIENCE = 90.0  # s: Flower counts a node online until 2 x 30 s after its last heartbeat
ACTIVATION_RETRY_DELAY = 5.0
BOOTSTRAP = "from fedsim.deploy.supernode import main; main()"
WORKER_RESTART_DELAY = 1.0
DEFAULT_RUNTIME_PORT = 9094


def with_client_certificate(cert: str | Path, key: str | Path) -> None:
    """Make the SuperNode's Fleet HTTP client present this TLS client certificate to the server's proxy."""
    from flwr.supernode.fleet_http_client import FleetHttpClient

    original = FleetHttpClient.__init__

    def init(self: FleetHttpClient, base_url: str, **kwargs: Any) -> None:
        verify = kwargs.get("verify", True)
        if verify is not False:  # an https:// connection: trust what Flower was told to trust, and show our certificate
            context = verify if isinstance(verify, ssl.SSLContext) else ssl.create_default_context(
                cafile=verify if isinstance(verify, str) else None)
            context.load_cert_chain(str(cert), str(key))
            kwargs["verify"] = context
        original(self, base_url, **kwargs)

    FleetHttpClient.__init__ = init  # type: ignore[method-assign]


class _ActivationWatch(logging.Handler):
    """Notices Flower's exit when the SuperLink refuses to activate this node (exit code 305, "Failed to activate
    SuperNode"): its key is not registered, or a SuperNode with this key stopped less than a minute ago and still
    counts as online."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.refused = False

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        self.refused = self.refused or ("Exit Code: 305" in text and "Failed to activate SuperNode" in text)


def _option(args: Sequence[str], name: str) -> str | None:
    for position, arg in enumerate(args):
        if arg == name and position + 1 < len(args):
            return args[position + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _runtime_port(args: Sequence[str]) -> int:
    value = _option(args, "--port")
    return int(value) if value is not None else DEFAULT_RUNTIME_PORT


class WorkerWatchdog:
    """Keeps one warm ClientApp worker (`fedsim.deploy.worker`) running beside this SuperNode."""

    def __init__(self, runtime_address: str, secret_file: Path) -> None:
        from .worker import worker_command

        self.command = worker_command(runtime_address, secret_file, os.getpid())
        self.process: subprocess.Popen | None = None
        self.stopping = threading.Event()
        self._lock = threading.Lock()  # no new worker starts while stop() ends the current one
        self.thread = threading.Thread(target=self._keep_running, name="fedsim-worker-watchdog", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _keep_running(self) -> None:
        while True:
            with self._lock:
                if self.stopping.is_set():
                    return
                self.process = subprocess.Popen(self.command)  # pylint: disable=consider-using-with
            code = self.process.wait()
            if self.stopping.is_set():
                return
            reason = " (SIGKILL: out of memory?)" if code == -9 else ""
            print(f"fedsim: the ClientApp worker exited with code {code}{reason}; starting a new one", file=sys.stderr,
                  flush=True)
            self.stopping.wait(WORKER_RESTART_DELAY)

    def stop(self) -> None:
        with self._lock:
            self.stopping.set()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def main(args: Sequence[str] | None = None) -> None:
    """Run Flower's SuperNode with `args` (flower-supernode's options), plus the additions in the module docstring."""
    args = list(sys.argv[1:] if args is None else args)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    deadline = float(os.environ.setdefault(ACTIVATION_DEADLINE_VARIABLE, str(time.time() + ACTIVATION_PATIENCE)))
    if os.environ.pop(RETRY_VARIABLE, None):
        time.sleep(ACTIVATION_RETRY_DELAY)
    cert, key = os.environ.get(CLIENT_CERT_VARIABLE), os.environ.get(CLIENT_KEY_VARIABLE)
    if cert and key:
        with_client_certificate(cert, key)
    pace_supernode()
    activation = _ActivationWatch()
    logging.getLogger("flwr").addHandler(activation)
    private_folder = Path(tempfile.mkdtemp(prefix="fedsim-node-"))  # 0700: the secret stays this user's
    secret_file = private_folder / "superexec.secret"
    descriptor = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as stream:
        stream.write(secrets.token_bytes(32))
    watchdog = WorkerWatchdog(f"127.0.0.1:{_runtime_port(args)}", secret_file)

    def clean_up() -> None:
        watchdog.stop()
        secret_file.unlink(missing_ok=True)
        shutil.rmtree(private_folder, ignore_errors=True)

    sys.argv = ["flower-supernode", *args, "--isolation", "process", "--superexec-auth-secret-file", str(secret_file)]
    from flwr.supernode.cli import flower_supernode

    watchdog.start()
    try:
        flower_supernode()
    except SystemExit:
        clean_up()
        if not activation.refused:
            raise
        if time.time() < deadline:  # most likely this node's previous process, still counted online: try again
            print("fedsim: the SuperLink refused to activate this node; "
                  f"trying again in {ACTIVATION_RETRY_DELAY:.0f} s "
                  "(a SuperNode with this key that stopped less than a minute ago still counts as online)",
                  file=sys.stderr, flush=True)
            os.environ[RETRY_VARIABLE] = "1"
            os.execv(sys.executable, [sys.executable, "-c", BOOTSTRAP, *args])  # before Flower's 5 s forced exit
        name = os.environ.get(NODE_NAME_VARIABLE, "node-<i>")
        public_key = os.environ.get(PUBLIC_KEY_VARIABLE, "<this node's node.pub>")
        print("fedsim: error: the SuperLink refuses this node's key: on the server, register it with "
              f"`flwr supernode register {public_key} <connection> --name {name}` "
              "(if it is registered, another SuperNode with this key is running)", file=sys.stderr, flush=True)
        raise
    except BaseException:
        clean_up()
        raise
    else:
        clean_up()


if __name__ == "__main__":
    main()
