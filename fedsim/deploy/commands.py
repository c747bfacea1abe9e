"""The `fedsim certs` and `fedsim deploy ...` commands: what an operator types on the server and on client machines.

- `fedsim certs DIR --nodes N --host NAME ...`: the federation's keys (`fedsim.deploy.certs`);
- `fedsim deploy server --certs DIR`: the server machine (SuperLink on loopback + proxy), in the foreground;
- `fedsim deploy node --superlink HOST:PORT --credentials DIR --node-config '...'`: one client machine;
- `fedsim deploy local --nodes N <overrides>`: all of it on this machine, then the experiment;
- `fedsim deploy app DIR`: a Flower App folder that runs the installed fedsim, for `flwr run DIR`.
Every mistake an operator can make here ends in one line that says what to do (exit code 2).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from ..errors import DeployError


class _Parser(argparse.ArgumentParser):
    """argparse whose mistakes are fedsim's one-line errors, not a usage dump."""

    def error(self, message: str) -> NoReturn:
        raise DeployError(f"{self.prog}: {message} (see {self.prog} --help)")


def _say(line: str) -> None:
    from ..progress import console

    console.print(line, highlight=False, soft_wrap=True, markup=False)


# --- fedsim certs ------------------------------------------------------------------------------------------

def certs_command(args: Sequence[str]) -> None:
    """`fedsim certs DIR [--nodes N] [--host NAME ...] [--days D]
    [--add-nodes N | --force | --revoke NODE | --show]`."""
    from .certs import VALID_DAYS, Credentials, add_nodes, expiry_lines, make_certificates, revoke_node

    parser = _Parser(prog="fedsim certs",
                     description="Keys and certificates of a federation (README: Several machines).")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--nodes", type=int, default=0, help="node folders to issue with a new CA")
    parser.add_argument("--host", action="append", default=[],
                        help="a name or address of the server, as nodes reach it")
    parser.add_argument("--days", type=int, default=VALID_DAYS,
                        help=f"validity of new certificates (default {VALID_DAYS})")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--add-nodes", type=int, metavar="N", help="issue N more node folders from the folder's CA")
    action.add_argument("--force", action="store_true", help="remove the folder's keys and start over")
    action.add_argument("--revoke", metavar="NODE", help="revoke node NODE's client certificate (e.g. node-2)")
    action.add_argument("--show", action="store_true", help="list the certificates, their expiry and revocations")
    options = parser.parse_args(list(args))
    for name in ("nodes", "days", "add_nodes"):
        value = getattr(options, name)
        if value is not None and value < (1 if name != "nodes" else 0):
            least = "at least 1" if name != "nodes" else "0 or more"
            raise DeployError(f"--{name.replace('_', '-')} {value}: must be {least}")
    credentials = Credentials(options.folder)
    if options.show:  # a report: stdout
        from ..progress import output

        for line in expiry_lines(credentials):
            output.print(line, highlight=False, soft_wrap=True, markup=False)
        return
    if options.revoke:
        node = revoke_node(options.folder, options.revoke)
        _say(f"revoked {node.name}'s client certificate in {credentials.crl}. Now, on the server: copy crl.pem to the "
             "server's certificate folder if this is not it, make the proxy re-read it "
             "(`systemctl reload fedsim-server`, or `kill -HUP` the `fedsim deploy server` process), and unregister "
             "the node's key: "
             f"`flwr supernode ls` shows its node id, `flwr supernode unregister <node-id> <connection>`")
        return
    if options.add_nodes:
        nodes = add_nodes(options.folder, options.add_nodes, options.days)
    else:
        credentials = make_certificates(options.folder, options.nodes, tuple(options.host), options.days, options.force)
        nodes = credentials.nodes
        hosts = ", ".join(["localhost", "127.0.0.1", *options.host])
        _say(f"CA: {credentials.ca_cert} (ca.key stays with the operator; keep it offline when not issuing)")
        _say(f"server: {credentials.server_cert}, {credentials.server_key} (valid for {hosts}), "
             f"revocations: {credentials.crl}")
    for node in nodes:
        _say(f"{node.name}: copy {node.folder}/ to that client machine; on the server, register it with "
             f"`flwr supernode register {node.auth_public_key} <connection> --name {node.name}`")
    for line in expiry_lines(credentials, nodes):
        _say(line)


# --- fedsim deploy -------------------------------------------------------------------------------------------

USAGE = ("usage: fedsim deploy local --nodes N [--insecure] [--out DIR] <overrides> | fedsim deploy server --certs DIR "
         "[--state DIR] [--listen HOST:PORT] | fedsim deploy node --superlink HOST:PORT --credentials DIR "
         "--node-config '...' [--check] | fedsim deploy app DIR")
HELP = """usage: fedsim deploy <command> [...]    (fedsim deploy <command> --help for its options)

Runs fedsim under Flower's Deployment Runtime (README: Deploying on separate machines).

commands:
  server   the server machine: the SuperLink on loopback behind a TLS proxy that wants node certificates
  node     one client machine: checks the link, then runs its SuperNode
  local    a whole federation on this machine (SuperLink, proxy, N SuperNodes) running one experiment
  app      write a Flower App folder that runs the installed fedsim, for `flwr run`"""


def deploy_command(args: Sequence[str]) -> None:
    from ..progress import output

    args = list(args)
    commands: dict[str, Callable[[list[str]], None]] = {"local": local_command, "server": server_command,
                                                       "node": node_command, "app": app_command}
    if args[:1] in (["-h"], ["--help"]):
        output.print(HELP, highlight=False, markup=False, soft_wrap=True)
        return
    if not args or args[0] not in commands:
        raise DeployError(USAGE)
    commands[args[0]](args[1:])


def app_command(args: list[str]) -> None:
    from .local_federation import write_installed_app

    if args[:1] in (["-h"], ["--help"]):
        from ..progress import output

        output.print("usage: fedsim deploy app DIR\n\nWrites a Flower App in DIR (pyproject.toml, no code) whose "
                     "ServerApp and ClientApp are the installed fedsim's.", highlight=False, markup=False)
        return
    if len(args) != 1:
        raise DeployError("usage: fedsim deploy app DIR")
    _say(f"Flower App (runs the installed fedsim): {write_installed_app(Path(args[0]))}")


def _address(text: str, option: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DeployError(f"{option} {text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def server_command(args: list[str]) -> None:
    """`fedsim deploy server --certs DIR [--state DIR] [--listen HOST:PORT] [--superlink-port P] [--insecure]`."""
    from .certs import Credentials
    from .processes import ProcessSet, install_signal_handlers, write_flower_shims
    from .superlink import ServerLayout, start_server

    parser = _Parser(prog="fedsim deploy server", description="The server machine: SuperLink on loopback + TLS proxy.")
    parser.add_argument("--certs", type=Path, help="the folder `fedsim certs` made (its ca.key is not needed here)")
    parser.add_argument("--state", type=Path, default=Path("fedsim-state"), help="SuperLink database and proxy files")
    parser.add_argument("--listen", default="0.0.0.0:9093", help="where client machines connect (default 0.0.0.0:9093)")
    parser.add_argument("--superlink-port", type=int, default=9091, help="the SuperLink's loopback port (default 9091)")
    parser.add_argument("--insecure", action="store_true", help="no TLS, no authentication, no proxy: debugging only")
    options = parser.parse_args(args)
    host, port = _address(options.listen, "--listen")
    credentials = None
    if not options.insecure:
        if options.certs is None:
            raise DeployError("fedsim deploy server needs --certs DIR "
                              "(from `fedsim certs DIR --nodes N --host <this server>`)")
        credentials = Credentials(options.certs)
        for path in (credentials.ca_cert, credentials.server_cert, credentials.server_key, credentials.crl):
            if not path.is_file():
                raise DeployError(f"--certs {options.certs} has no {path.name}: "
                                  f"make it with `fedsim certs {options.certs} ...`")
    layout = ServerLayout(options.state.resolve(), credentials, host, port, options.superlink_port)
    install_signal_handlers()
    processes = ProcessSet(layout.state_dir / "logs", write_flower_shims(layout.state_dir / "bin"))
    def reload_proxy(signum: int, frame: object) -> None:  # pylint: disable=unused-argument
        """SIGHUP (`systemctl reload`): the proxy re-reads its certificates and crl.pem; nothing stops."""
        if "proxy" in processes.processes:
            processes.processes["proxy"].send_signal(signal.SIGHUP)

    signal.signal(signal.SIGHUP, reload_proxy)
    try:
        start_server(processes, layout, processes.path_prefix)
        _say(f"SuperLink: {layout.control_address} (loopback: the operator's flwr connects here, with "
             f"root-certificates {credentials.ca_cert if credentials else '-'}); state {layout.database}")
        through = "" if options.insecure else " through the proxy (client certificate required)"
        _say(f"client machines connect to {options.listen}{through}")
        _say(f"logs: {processes.log_dir}")
        while all(process.poll() is None for process in processes.processes.values()):
            time.sleep(1.0)
        stopped = next(name for name, process in processes.processes.items() if process.poll() is not None)
        raise DeployError(f"the {stopped} stopped (exit code {processes.processes[stopped].returncode}); "
                          f"see {processes.log_path(stopped)}")
    except KeyboardInterrupt:
        _say("stopping the SuperLink and the proxy")
    finally:
        processes.stop()


def node_command(args: list[str]) -> None:
    """`fedsim deploy node --superlink HOST:PORT --credentials DIR --node-config '...' [--check]
    [flower-supernode options]`: check the link, then become the SuperNode (`fedsim.deploy.supernode`)."""
    from .certs import NodeCredentials
    from .preflight import check_superlink
    from .supernode import BOOTSTRAP, CLIENT_CERT_VARIABLE, CLIENT_KEY_VARIABLE, NODE_NAME_VARIABLE, PUBLIC_KEY_VARIABLE

    parser = _Parser(prog="fedsim deploy node", description="One client machine's SuperNode.")
    parser.add_argument("--superlink", required=True, help="the server's address as nodes reach it, HOST:PORT")
    parser.add_argument("--credentials", type=Path, help="this node's folder from fedsim certs (nodes/node-<i>)")
    parser.add_argument("--check", action="store_true", help="only check that the server answers, then exit")
    parser.add_argument("--insecure", action="store_true", help="no TLS: only against a server started with --insecure")
    options, flower_args = parser.parse_known_args(args)
    if any(arg.startswith("--isolation") or arg.startswith("--superexec-auth-secret-file") for arg in flower_args):
        raise DeployError("fedsim deploy node runs the SuperNode with its own warm ClientApp worker: "
                          "leave out --isolation and --superexec-auth-secret-file")
    _address(options.superlink, "--superlink")
    env = {}
    supernode_args = ["--superlink", options.superlink, *flower_args]
    if options.insecure:
        check_superlink(options.superlink, None, insecure=True)
        supernode_args.append("--insecure")
    else:
        if options.credentials is None:
            raise DeployError("fedsim deploy node needs --credentials <this node's folder from fedsim certs, "
                              "e.g. node-0/> (or --insecure against a server started with --insecure)")
        node = NodeCredentials(options.credentials)
        for path in (node.ca_cert, node.client_cert, node.client_key, node.auth_key):
            if not path.is_file():
                raise DeployError(f"--credentials {options.credentials} has no {path.name}: "
                                  "copy the whole nodes/node-<i> folder that fedsim certs made")
        if node.auth_key.stat().st_mode & 0o077:
            raise DeployError(f"{node.auth_key} can be read by other users: "
                              f"`chmod 600 {node.auth_key} {node.client_key}`")
        check_superlink(options.superlink, node.ca_cert, False, client_cert=node.client_cert,
                        client_key=node.client_key)
        supernode_args += ["--root-certificates", str(node.ca_cert), "--auth-supernode-private-key", str(node.auth_key)]
        env = {CLIENT_CERT_VARIABLE: str(node.client_cert), CLIENT_KEY_VARIABLE: str(node.client_key),
               NODE_NAME_VARIABLE: node.name, PUBLIC_KEY_VARIABLE: str(node.auth_public_key)}
    if options.check:
        _say(f"ok: the server at {options.superlink} accepts this node's connection")
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.environ.update(env)
    os.execv(sys.executable, [sys.executable, "-c", BOOTSTRAP, *supernode_args])


def local_command(args: list[str]) -> None:
    """`fedsim deploy local --nodes N [--insecure] [--out DIR] <overrides>`."""
    from .local_federation import deploy_local, federation_overrides

    parser = _Parser(prog="fedsim deploy local", description="A SuperLink, its proxy and N SuperNodes on this machine.")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--insecure", action="store_true", help="no TLS, no authentication, no proxy: debugging only")
    parser.add_argument("--out", type=Path, default=Path("outputs") / "deploy" / time.strftime("%Y-%m-%d_%H-%M-%S"))
    options, overrides = parser.parse_known_args(args)
    unknown = [arg for arg in overrides if arg.startswith("-")]
    if unknown:
        raise DeployError(f"unknown option {unknown[0]} (fedsim deploy local takes --nodes, --insecure, --out)")
    overrides = federation_overrides(overrides, options.nodes)
    check_memory(options.nodes)
    try:
        summary = deploy_local(options.nodes, overrides, options.out / "run", options.out / "federation",
                               insecure=options.insecure, say=_say)
    except KeyboardInterrupt:
        _say("interrupted: every SuperLink, proxy and SuperNode process was stopped")
        sys.exit(130)
    from ..progress import output, summary_table

    output.print(summary_table(summary))
    output.print(f"run folder: {options.out / 'run'}", highlight=False, soft_wrap=True, markup=False)


NODE_MEMORY_GIB = 0.6  # a SuperNode and its warm worker with the default job (docs/performance.md)


def check_memory(nodes: int, available_gib: float | None = None) -> None:
    """Refuse, in one line, a local federation that cannot fit in this machine's memory."""
    if available_gib is None:
        available_gib = _available_memory_gib()
    if available_gib is not None and nodes * NODE_MEMORY_GIB > available_gib:
        raise DeployError(f"--nodes {nodes} needs about {nodes * NODE_MEMORY_GIB:.0f} GiB ({NODE_MEMORY_GIB} GiB per "
                          f"SuperNode and its worker) but this machine has {available_gib:.1f} GiB available: "
                          "use fewer --nodes")


def _available_memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None
