"""A whole Flower deployment on loopback: one SuperLink and N SuperNodes as separate OS processes.

It is what `fedsim deploy local` runs, and what the deployment tests use: the same commands as on separate machines
(README, "Deploying on separate machines"), with TLS and SuperNode authentication unless `insecure=True`:

1. `fedsim certs`-style material in `<work>/certs` (CA, SuperLink certificate, one key pair per SuperNode);
2. `flower-superlink --enable-supernode-auth` with that certificate, on a free port;
3. a SuperLink connection `fedsim-local` in `<work>/flwr-home/config.toml` (FLWR_HOME), and
   `flwr supernode register` of every SuperNode's public key;
4. `flower-supernode --node-config 'partition-id=i num-partitions=N'` per node, each with its private key;
5. `flwr run <app> fedsim-local --run-config <toml> --stream` per experiment.

Every process is stopped on exit, Ctrl-C or failure (`fedsim.deploy.processes`).
"""

from __future__ import annotations

import shlex
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import FedsimError
from .certs import CertificateFiles, make_certificates, write_node_key_pair
from .processes import ProcessSet, free_port, write_flower_shims
from .server_app import OVERRIDES_KEY, RUN_DIR_KEY

CONNECTION = "fedsim-local"
HOST = "127.0.0.1"
STARTUP_TIMEOUT = 120.0

APP_PYPROJECT = """\
# A Flower App with no code of its own: the ServerApp and ClientApp come from the fedsim installed on each machine.
[project]
name = "fedsim"
version = "{version}"
description = "fedsim experiment"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "fedsim"

[tool.flwr.app.components]
serverapp = "fedsim.server:app"
clientapp = "fedsim.client:app"

[tool.flwr.app.config]
{overrides} = ""
{run_dir} = ""
"""


class DeployError(FedsimError):
    """A deployment step failed; the message says which, and where its log is."""


def write_installed_app(folder: Path) -> Path:
    """A Flower App folder whose FAB holds only pyproject.toml: nodes run the fedsim they have installed."""
    from .. import __version__

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(APP_PYPROJECT.format(version=__version__, overrides=OVERRIDES_KEY, run_dir=RUN_DIR_KEY))
    return folder


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _last_lines(path: Path, count: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-count:])
    except OSError:
        return "(no log)"


class LocalFederation:
    """A SuperLink and `num_nodes` SuperNodes on loopback; use as a context manager (stops everything on exit)."""

    def __init__(  # pylint: disable=too-many-arguments
        self,
        work_dir: str | Path,
        num_nodes: int,
        insecure: bool = False,
        node_configs: Sequence[Mapping[str, Any]] | None = None,
        app_dir: str | Path | None = None,
        say: Callable[[str], None] = print,
        host: str = HOST,
        node_prefix: Callable[[int], Sequence[str]] | None = None,
    ) -> None:
        """`host`: the address the SuperLink listens on (loopback by default); `node_prefix(i)`: a command that node i
        runs under, e.g. `ip netns exec <ns>` to put it in its own network namespace."""
        self.work_dir = Path(work_dir).resolve()
        self.num_nodes = num_nodes
        self.insecure = insecure
        self.node_configs = list(node_configs) if node_configs is not None else [
            {"partition-id": i, "num-partitions": num_nodes} for i in range(num_nodes)
        ]
        self.app_dir = Path(app_dir).resolve() if app_dir is not None else None
        self.say = say
        self.host = host
        self.node_prefix = node_prefix
        self.flwr_home = self.work_dir / "flwr-home"
        self.processes = ProcessSet(self.work_dir / "logs", write_flower_shims(self.work_dir / "bin"))
        self.port = 0
        self.certs: CertificateFiles | None = None

    # --- lifecycle ---------------------------------------------------------------------------------------
    def __enter__(self) -> LocalFederation:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if not self.insecure:
            self.certs = make_certificates(self.work_dir / "certs", self.num_nodes, (self.host,))
        self.start_superlink()
        self._write_connection()
        for index in range(self.num_nodes):
            if self.certs is not None:
                self.register(self.certs.node_public_keys[index])
            self.start_supernode(index)
        self.say(f"federation up: SuperLink {self.host}:{self.port} ({'insecure' if self.insecure else 'TLS + SuperNode auth'}), "
                 f"{self.num_nodes} SuperNodes; logs in {self.processes.log_dir}")

    def stop(self) -> None:
        self.processes.stop()

    # --- pieces ------------------------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        return {"FLWR_HOME": str(self.flwr_home)}

    def _tls_args(self) -> list[str]:
        if self.certs is None:
            return ["--insecure"]
        return ["--root-certificates", str(self.certs.ca_cert)]

    def start_superlink(self) -> None:
        self.port = free_port(self.host)
        args = ["flower-superlink", "--host", self.host, "--port", str(self.port), "--disable-runtime-dependency-installation"]
        if self.certs is None:
            args.append("--insecure")
        else:
            args += ["--ssl-certfile", str(self.certs.server_cert), "--ssl-keyfile", str(self.certs.server_key),
                     "--ssl-ca-certfile", str(self.certs.ca_cert), "--enable-supernode-auth"]
        process = self.processes.start("superlink", self._shimmed(args), self._env(), cwd=self.work_dir)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not _listening(self.host, self.port):
            if process.poll() is not None or time.monotonic() > deadline:
                log = self.processes.log_path("superlink")
                raise DeployError(f"the SuperLink did not start (log {log}):\n{_last_lines(log)}")
            time.sleep(0.3)

    def _shimmed(self, args: Sequence[str]) -> list[str]:
        """Run a Flower console script through this interpreter's shim."""
        assert self.processes.path_prefix is not None
        return [str(self.processes.path_prefix / args[0]), *args[1:]]

    def _write_connection(self) -> None:
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]", f'address = "{self.host}:{self.port}"']
        lines.append(f'root-certificates = "{self.certs.ca_cert}"' if self.certs is not None else "insecure = true")
        (self.flwr_home / "config.toml").write_text("\n".join(lines) + "\n")

    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Run the `flwr` CLI against this federation's SuperLink connection."""
        return subprocess.run(self._shimmed(["flwr", *args]), env=self.processes.environment(self._env()),
                              capture_output=True, text=True, timeout=timeout, cwd=self.work_dir, check=False)

    def register(self, public_key: Path) -> None:
        completed = self.flwr("supernode", "register", str(public_key), CONNECTION)
        if completed.returncode != 0:
            raise DeployError(f"flwr supernode register {public_key} failed: {(completed.stdout + completed.stderr).strip()}")

    def start_supernode(self, index: int, private_key: Path | None = None, node_config: Mapping[str, Any] | None = None,
                        name: str | None = None) -> subprocess.Popen:
        """Start one SuperNode; by default node `index` with its registered key and its partition."""
        config = dict(node_config if node_config is not None else self.node_configs[index])
        args = ["flower-supernode", "--superlink", f"{self.host}:{self.port}", "--port", str(free_port(HOST)),
                "--node-config", " ".join(f"{key}={_node_config_value(value)}" for key, value in config.items()),
                *self._tls_args()]
        key = private_key if private_key is not None else (self.certs.node_private_keys[index] if self.certs else None)
        if key is not None:
            args += ["--auth-supernode-private-key", str(key)]
        prefix = list(self.node_prefix(index)) if self.node_prefix is not None else []
        return self.processes.start(name or f"supernode-{index}", [*prefix, *self._shimmed(args)], self._env(), cwd=self.work_dir)

    def unregistered_key(self) -> Path:
        """A fresh SuperNode key pair that was never registered (tests: such a node must be refused)."""
        private = self.work_dir / "certs" / "stranger"
        write_node_key_pair(private, private.with_suffix(".pub"))
        return private

    def submit(self, overrides: Sequence[str], run_dir: str | Path, on_line: Callable[[str], None] | None = None,
               timeout: float | None = None) -> dict[str, Any]:
        """Run one experiment (`flwr run ... --stream`), relay its log lines, and return the run's summary."""
        import json

        run_dir = Path(run_dir).resolve()
        app = self.app_dir or write_installed_app(self.work_dir / "app")
        run_config = self.work_dir / f"run-config-{time.monotonic_ns()}.toml"
        run_config.write_text(f"{OVERRIDES_KEY} = {_toml_string(shlex.join(overrides))}\n{RUN_DIR_KEY} = {_toml_string(str(run_dir))}\n")
        args = self._shimmed(["flwr", "run", str(app), CONNECTION, "--run-config", str(run_config), "--stream"])
        lines: list[str] = []
        with subprocess.Popen(args, env=self.processes.environment(self._env()), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, cwd=self.work_dir) as client:
            started = time.monotonic()
            assert client.stdout is not None
            for line in client.stdout:
                lines.append(line.rstrip("\n"))
                if on_line is not None:
                    on_line(line.rstrip("\n"))
                if timeout is not None and time.monotonic() - started > timeout:
                    client.kill()
                    raise DeployError(f"the run did not finish within {timeout:.0f} s")
        summary_file = run_dir / "summary.json"
        if not summary_file.is_file():
            ours = [line for line in lines if "fedsim: error" in line]  # the ServerApp's own one-line reason
            errors = ours or [line for line in lines if "Error" in line]
            detail = errors[-1] if errors else "\n".join(lines[-10:])
            raise DeployError(f"the run ended without a summary ({run_dir}): {detail}")
        return json.loads(summary_file.read_text())


def _node_config_value(value: Any) -> str:
    """Node-config values are TOML: strings quoted, numbers bare."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _toml_string(str(value))
    return str(value)


def _listening(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def deploy_local(num_nodes: int, overrides: Sequence[str], run_dir: Path, work_dir: Path, insecure: bool = False,
                 say: Callable[[str], None] = print) -> dict[str, Any]:
    """`fedsim deploy local`: start the federation, run the experiment, stop every process, return the summary."""
    from .processes import install_signal_handlers

    install_signal_handlers()
    with LocalFederation(work_dir, num_nodes, insecure=insecure, say=say) as federation:
        return federation.submit(overrides, run_dir, on_line=say)



def federation_overrides(overrides: Sequence[str], num_nodes: int) -> list[str]:
    """The user's overrides with `num_clients` set to the node count, checked here before any process starts."""
    from ..config import compose_experiment, validate

    if num_nodes < 1:
        raise DeployError("--nodes needs a positive number of SuperNodes")
    given = [o for o in overrides if o.split("=", 1)[0].lstrip("+") == "num_clients"]
    if given and given[-1].split("=", 1)[1] != str(num_nodes):
        raise DeployError(f"{given[-1]} but --nodes {num_nodes}: each SuperNode holds one partition, so use the same number")
    result = list(overrides) if given else [*overrides, f"num_clients={num_nodes}"]
    validate(compose_experiment(result))
    return result
