"""A whole hardened deployment on one machine: the server's processes and N SuperNodes as separate OS processes.

It is what `fedsim deploy local` runs, what `fedsim resume` restarts for a run made that way, and what the
deployment tests and `bench/deploy_throughput.py` use. It runs the same commands as the README's "Several
machines" setup:

1. `fedsim certs`: a CA, the server's certificate and one folder per node (`<work>/certs`);
2. `fedsim.deploy.superlink.start_server`: the SuperLink on loopback with its state in `<work>/state`, and the
   nginx proxy on a free port (the only one nodes reach);
3. a SuperLink connection `fedsim-local` in `<work>/flwr-home/config.toml` (FLWR_HOME), as the operator writes one,
   and `flwr supernode register node.pub fedsim-local --name node-<i>` for every node;
4. `fedsim deploy node --credentials <work>/certs/nodes/node-<i> --node-config 'partition-id=i num-partitions=N'`
   per node;
5. `flwr run <app> fedsim-local --run-config <toml> --stream` per experiment.

A work folder that already holds certificates and a SuperLink database is reused as it is: the nodes keep their
keys and registrations, which is how a deployed run is resumed after the federation stopped. Every process is
stopped on exit, Ctrl-C or failure (`fedsim.deploy.processes`).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import DeployError
from .certs import Credentials, NodeCredentials, make_certificates
from .processes import ProcessSet, free_port, write_flower_shims
from .server_app import OVERRIDES_KEY, RUN_DIR_KEY
from .superlink import ServerLayout, start_server, wait_until_listening

__all__ = ["CONNECTION", "DeployError", "LocalFederation", "deploy_local", "federation_overrides",
           "write_installed_app"]

CONNECTION = "fedsim-local"
HOST = "127.0.0.1"
FEDERATION_FILE = "federation.json"  # how to start this work folder's federation again

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


def write_installed_app(folder: Path) -> Path:
    """A Flower App folder whose FAB holds only pyproject.toml: nodes run the fedsim they have installed."""
    from .. import __version__

    folder.mkdir(parents=True, exist_ok=True)
    pyproject = APP_PYPROJECT.format(version=__version__, overrides=OVERRIDES_KEY, run_dir=RUN_DIR_KEY)
    (folder / "pyproject.toml").write_text(pyproject)
    return folder


def toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def node_config_text(config: Mapping[str, Any]) -> str:
    """`--node-config` text: TOML values, strings quoted, numbers bare."""
    def value(item: Any) -> str:
        return toml_string(str(item)) if isinstance(item, bool) or not isinstance(item, (int, float)) else str(item)

    return " ".join(f"{key}={value(item)}" for key, item in config.items())


def node_command(superlink: str, node: NodeCredentials | None, node_config: Mapping[str, Any],
                 runtime_port: int) -> list[str]:
    """`fedsim deploy node ...` for one SuperNode, as an operator types it on a client machine."""
    command = [sys.executable, "-m", "fedsim.cli", "deploy", "node", "--superlink", superlink,
               "--port", str(runtime_port), "--node-config", node_config_text(node_config)]
    return command + (["--credentials", str(node.folder)] if node is not None else ["--insecure"])


class LocalFederation:
    """The server's processes and `num_nodes` SuperNodes; use as a context manager (stops everything on exit)."""

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
        server_prefix: Sequence[str] = (),
    ) -> None:
        """`host`: the address the proxy listens on and nodes connect to (loopback by default); `node_prefix(i)`: a
        command node i runs under, `server_prefix` one the server's processes and the operator's `flwr` run under
        (e.g. `ip netns exec <ns>`, to give each its own network namespace)."""
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
        self.server_prefix = tuple(server_prefix)
        self.flwr_home = self.work_dir / "flwr-home"
        self.shims = write_flower_shims(self.work_dir / "bin")
        self.processes = ProcessSet(self.work_dir / "logs", self.shims)
        self.credentials: Credentials | None = None
        self.layout: ServerLayout | None = None

    @classmethod
    def restart(cls, work_dir: Path, say: Callable[[str], None] = print) -> LocalFederation:
        """The federation `fedsim deploy local` ran in `work_dir`, with the same nodes, keys and SuperLink state."""
        spec = json.loads((Path(work_dir) / FEDERATION_FILE).read_text())
        return cls(work_dir, int(spec["num_nodes"]), bool(spec["insecure"]), spec["node_configs"], say=say)

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
            self.credentials = self._credentials()
        self.layout = ServerLayout(self.work_dir / "state", self.credentials, self.host, free_port(HOST),
                                   free_port(HOST) if self.credentials is not None else 0)
        (self.work_dir / FEDERATION_FILE).write_text(json.dumps(
            {"num_nodes": self.num_nodes, "insecure": self.insecure, "node_configs": self.node_configs}, indent=2))
        self.start_server()
        self._write_connection()
        for index in range(self.num_nodes):
            if self.credentials is not None:
                self.register(self.credentials.nodes[index])
            self.start_supernode(index)
        protection = "insecure" if self.insecure else "TLS proxy with client certificates + SuperNode auth"
        self.say(f"federation up: nodes connect to {self.host}:{self.layout.listen_port} ({protection}), operator's "
                 f"SuperLink {self.layout.control_address}; {self.num_nodes} SuperNodes; "
                 f"logs in {self.processes.log_dir}")

    def stop(self) -> None:
        """Stop the SuperNodes first, so they sign off while the SuperLink still listens (a node that did not stays
        "online" for a minute and could not activate at once in a restarted federation), then everything else."""
        nodes = [process for name, process in self.processes.processes.items()
                 if name.startswith("supernode") and process.poll() is None]
        for process in nodes:
            process.terminate()
        deadline = time.monotonic() + 15
        for process in nodes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        self.processes.stop()

    def _credentials(self) -> Credentials:
        """This folder's certificates: made once, then reused (a restarted federation keeps its nodes' keys)."""
        credentials = Credentials(self.work_dir / "certs")
        if credentials.holds_keys() and len(credentials.nodes) >= self.num_nodes:
            return credentials
        return make_certificates(credentials.folder, self.num_nodes, (self.host,), start_over=True)

    # --- the server machine ------------------------------------------------------------------------------
    def start_server(self) -> None:
        """Start (or, after `kill_superlink`, restart) the SuperLink and the proxy on the same ports and state."""
        assert self.layout is not None
        if "proxy" in self.processes.processes and self.processes.processes["proxy"].poll() is None:
            self.processes.start("superlink", [*self.server_prefix, *self._shimmed(self.layout.superlink_command())],
                                 cwd=self.layout.state_dir)
            wait_until_listening(self.processes, "superlink", "127.0.0.1", self.layout.superlink_port, "the SuperLink",
                                 self.server_prefix)
            return
        start_server(self.processes, self.layout, self.shims, self.server_prefix)

    def kill_superlink(self) -> None:
        """SIGKILL the SuperLink and everything it started (a crash); the proxy and the nodes keep running."""
        self.processes.stop_one("superlink")

    def _shimmed(self, args: Sequence[str]) -> list[str]:
        """Run a Flower console script through this interpreter's shim."""
        return [str(self.shims / args[0]), *args[1:]]

    def _write_connection(self) -> None:
        assert self.layout is not None
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]",
                 f'address = "{self.layout.control_address}"']
        lines.append(f'root-certificates = "{self.credentials.ca_cert}"' if self.credentials is not None
                     else "insecure = true")
        (self.flwr_home / "config.toml").write_text("\n".join(lines) + "\n")

    def environment(self) -> dict[str, str]:
        return {"FLWR_HOME": str(self.flwr_home)}

    def flwr(self, *args: str, timeout: float = 120.0, prefix: Sequence[str] | None = None,
             env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run the `flwr` CLI as the operator does (on the server machine, with its connection), or under another
        `prefix`/`env` (tests: an outsider's machine)."""
        where = self.server_prefix if prefix is None else tuple(prefix)
        return subprocess.run([*where, *self._shimmed(["flwr", *args])],
                              env=self.processes.environment({**self.environment(), **(env or {})}),
                              capture_output=True, text=True, timeout=timeout, cwd=self.work_dir, check=False)

    def register(self, node: NodeCredentials) -> None:
        """`flwr supernode register node.pub fedsim-local --name node-<i>`; a key the SuperLink's database already
        holds (a restarted federation) is fine."""
        completed = self.flwr("supernode", "register", str(node.auth_public_key), CONNECTION, "--name", node.name)
        output = (completed.stdout + completed.stderr).strip()
        if completed.returncode != 0 and "already" not in output.lower():
            raise DeployError(f"flwr supernode register {node.auth_public_key} failed: {output}")

    # --- client machines ---------------------------------------------------------------------------------
    def start_supernode(self, index: int, node: NodeCredentials | None = None,  # pylint: disable=too-many-arguments
                        node_config: Mapping[str, Any] | None = None,
                        name: str | None = None, env: Mapping[str, str] | None = None,
                        prefix: Sequence[str] | None = None) -> subprocess.Popen:
        """Start one SuperNode with `fedsim deploy node`; by default node `index` with its credentials and partition,
        under `node_prefix(index)`."""
        assert self.layout is not None
        config = dict(node_config if node_config is not None else self.node_configs[index])
        if node is None and self.credentials is not None:
            node = self.credentials.nodes[index]
        command = node_command(f"{self.host}:{self.layout.listen_port}", node, config, free_port(HOST))
        if prefix is None:
            prefix = list(self.node_prefix(index)) if self.node_prefix is not None else []
        return self.processes.start(name or f"supernode-{index}", [*prefix, *command],
                                    {**self.environment(), **(env or {})}, cwd=self.work_dir)

    def _run_command(self, overrides: Sequence[str], run_dir: Path, stream: bool) -> list[str]:
        app = self.app_dir or write_installed_app(self.work_dir / "app")
        run_config = write_run_config(self.work_dir / f"run-config-{time.monotonic_ns()}.toml", overrides, run_dir)
        command = ["flwr", "run", str(app), CONNECTION, "--run-config", str(run_config),
                   *(["--stream"] if stream else [])]
        return [*self.server_prefix, *self._shimmed(command)]

    def submit(self, overrides: Sequence[str], run_dir: str | Path, on_line: Callable[[str], None] | None = None,
               timeout: float | None = None) -> dict[str, Any]:
        """Run one experiment (`flwr run ... --stream`), relay its log lines, and return the run's summary. A
        `run_dir` that holds an interrupted run of the same experiment continues from its checkpoint."""
        run_dir = Path(run_dir).resolve()
        return submit_run(self._run_command(overrides, run_dir, stream=True),
                          self.processes.environment(self.environment()), run_dir, self.work_dir, on_line, timeout,
                          flwr=[*self.server_prefix, *self._shimmed(["flwr"])], connection=CONNECTION)

    def start_run(self, overrides: Sequence[str], run_dir: str | Path) -> str:
        """Submit an experiment without following it (`flwr run` without `--stream`); returns flwr's output."""
        completed = subprocess.run(self._run_command(overrides, Path(run_dir).resolve(), stream=False),
                                   env=self.processes.environment(self.environment()), capture_output=True, text=True,
                                   timeout=120, cwd=self.work_dir, check=False)
        if completed.returncode != 0:
            raise DeployError(f"flwr run failed: {(completed.stdout + completed.stderr).strip()}")
        return completed.stdout


def write_run_config(path: Path, overrides: Sequence[str], run_dir: Path) -> Path:
    """The `--run-config` file of `flwr run` that submits an experiment (its overrides) into `run_dir`."""
    path.write_text(f"{OVERRIDES_KEY} = {toml_string(shlex.join(overrides))}\n"
                    f"{RUN_DIR_KEY} = {toml_string(str(run_dir))}\n")
    return path


def submit_run(command: Sequence[str], env: Mapping[str, str], run_dir: Path, cwd: Path,  # pylint: disable=too-many-arguments
               on_line: Callable[[str], None] | None = None, timeout: float | None = None,
               flwr: Sequence[str] | None = None, connection: str | None = None) -> dict[str, Any]:
    """Run `flwr run ... --stream`, relay its lines, and return the summary the ServerApp wrote into `run_dir`; a run
    that ends without one is a one-line error carrying the ServerApp's own reason.

    Given the `flwr` command and the `connection`, a log stream that breaks while the run goes on (a SuperLink busy
    with many nodes can let the stream's connection time out) is followed again with `flwr log RUN_ID --stream`.
    """
    lines: list[str] = []
    summary_file = run_dir / "summary.json"
    earlier = summary_file.stat().st_mtime_ns if summary_file.exists() else None
    started = time.monotonic()
    run_id: int | None = None
    follows = 0
    while True:
        run_id = _follow(command, env, cwd, lines, on_line, started, timeout) or run_id
        if _summary_written(summary_file, earlier) or any("fedsim: error: " in line for line in lines):
            break
        if (flwr is None or run_id is None or follows >= MAX_FOLLOWS
                or not _still_running(flwr, connection, run_id, env, cwd)):
            break
        follows += 1
        if on_line is not None:
            on_line(f"fedsim: the log stream of run {run_id} broke while it runs; following it again")
        command = [*flwr, "log", str(run_id), *([connection] if connection else []), "--stream"]
    # the ServerApp's one line
    ours = [line.split("fedsim: error: ", 1)[1] for line in lines if "fedsim: error: " in line]
    if ours:
        raise DeployError(ours[-1])
    if not _summary_written(summary_file, earlier):
        errors = [line for line in lines if "Error" in line or "error" in line]
        detail = errors[-1] if errors else " / ".join(lines[-5:]) or "flwr printed nothing"
        raise DeployError(f"the run ended without a summary ({run_dir}): {detail}")
    return json.loads(summary_file.read_text())


MAX_FOLLOWS = 20  # times a broken log stream of one run is followed again
RUN_ID_LINE = re.compile(r"run_id `(\d+)`|started run (\d+)")


def _follow(command: Sequence[str], env: Mapping[str, str], cwd: Path, lines: list[str],  # pylint: disable=too-many-arguments
            on_line: Callable[[str], None] | None, started: float, timeout: float | None) -> int | None:
    """Run one `flwr run/log --stream`, relay and keep its lines; the run id it names, if any."""
    run_id = None
    with subprocess.Popen(list(command), env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          cwd=cwd) as client:
        assert client.stdout is not None
        for line in client.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            if (found := RUN_ID_LINE.search(line)) is not None:
                run_id = int(found.group(1) or found.group(2))
            if on_line is not None:
                on_line(line)
            if timeout is not None and time.monotonic() - started > timeout:
                client.kill()
                raise DeployError(f"the run did not finish within {timeout:.0f} s")
    return run_id


def _summary_written(summary_file: Path, earlier: int | None) -> bool:
    """Whether the ServerApp wrote a complete summary since `earlier` (its modification time before the run)."""
    try:
        written = summary_file.stat().st_mtime_ns
        return written != earlier and bool(json.loads(summary_file.read_text()).get("complete"))
    except (OSError, ValueError):
        return False


def _still_running(flwr: Sequence[str], connection: str | None, run_id: int, env: Mapping[str, str], cwd: Path) -> bool:
    """Whether the SuperLink lists run `run_id` as not finished (`flwr ls --run-id`); False when it cannot tell."""
    try:
        completed = subprocess.run([*flwr, "ls", "--run-id", str(run_id), *([connection] if connection else []),
                                    "--format", "json"], env=dict(env), cwd=cwd, capture_output=True, text=True,
                                   timeout=120, check=False)
        runs = json.loads(completed.stdout).get("runs", [])
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return False
    return bool(runs) and not str(runs[0].get("status", "finished")).startswith("finished")


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
        raise DeployError(f"{given[-1]} but --nodes {num_nodes}: each SuperNode holds one partition, "
                          "so use the same number")
    result = list(overrides) if given else [*overrides, f"num_clients={num_nodes}"]
    validate(compose_experiment(result))
    return result
