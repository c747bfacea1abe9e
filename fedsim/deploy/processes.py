"""Flower's processes, started so that none outlives fedsim.

Flower's daemons start children of their own (the SuperLink a detached `flower-superexec`, which starts
`flwr-serverapp`; each SuperNode a `flower-superexec` that starts one `flwr-clientapp` per message), some in new
sessions, so a process group alone does not reach them all. Every process started here therefore carries a token in
its environment (children inherit it), and `ProcessSet.stop` ends the process trees it knows *and* any process of
this user whose environment holds the token. Stopping happens on `stop()`, at interpreter exit (atexit) and on
SIGTERM/SIGHUP (turned into KeyboardInterrupt, like Ctrl-C, so `with` blocks unwind).
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from importlib.metadata import distribution
from pathlib import Path
from typing import IO

TOKEN_VARIABLE = "FEDSIM_DEPLOY_TOKEN"
FLOWER_DISTRIBUTION = "flwr"

_LIVE: list[ProcessSet] = []


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def write_flower_shims(folder: Path) -> Path:
    """Wrapper scripts for Flower's console scripts that run them on *this* interpreter.

    Flower finds its helpers (`flower-superexec`, `flwr-serverapp`, `flwr-clientapp`) on PATH; with these first on
    PATH they run with the same Python, hence the same fedsim, as the `fedsim` command, whatever the installed
    scripts' shebangs say (a copied or relocated virtual environment keeps the old interpreter in them).
    """
    folder.mkdir(parents=True, exist_ok=True)
    for entry in distribution(FLOWER_DISTRIBUTION).entry_points:
        if entry.group != "console_scripts":
            continue
        shim = folder / entry.name
        shim.write_text(f"#!/bin/sh\nexec {' '.join(_sh_quote(part) for part in flower_command(entry.name))} \"$@\"\n")
        shim.chmod(0o755)
    return folder


# Console scripts fedsim runs through its own entry point, which adjusts Flower and then calls Flower's.
ADJUSTED_ENTRY_POINTS = {"flower-superlink": "fedsim.deploy.pacing:superlink_main"}


def flower_command(name: str) -> list[str]:
    """A Flower console script (`flwr`, `flower-superlink`, ...) as a command on *this* interpreter."""
    if name in ADJUSTED_ENTRY_POINTS:
        value = ADJUSTED_ENTRY_POINTS[name]
    else:
        value = next(e for e in distribution(FLOWER_DISTRIBUTION).entry_points
                     if e.group == "console_scripts" and e.name == name).value
    module, _, function = value.partition(":")
    code = f"import sys; from {module} import {function} as main; sys.argv[0] = {name!r}; sys.exit(main())"
    return [sys.executable, "-c", code]


def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, process group) of a live process, from /proc; None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[2])


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def process_children() -> dict[int, list[int]]:
    """Parent pid -> the pids of its live children, from one scan of /proc."""
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        stat = _proc_stat(pid)
        if stat is not None:
            children.setdefault(stat[0], []).append(pid)
    return children


def descendants(roots: Sequence[int], children: dict[int, list[int]] | None = None) -> set[int]:
    """Every live process below `roots` (children, grandchildren, ...), from /proc or a `process_children()` map."""
    children = process_children() if children is None else children
    found: set[int] = set()
    stack = list(roots)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def processes_with_token(token: str) -> set[int]:
    """Live processes whose environment carries `token` (only this user's are readable; that is the point)."""
    marker = f"{TOKEN_VARIABLE}={token}".encode()
    found = set()
    for pid in _all_pids():
        if pid == os.getpid():
            continue
        try:
            environment = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if marker in environment.split(b"\0") and _proc_stat(pid) is not None:
            found.add(pid)
    return found


def _alive(pid: int) -> bool:
    stat = _proc_stat(pid)
    if stat is None:
        return False
    try:  # a zombie has exited; only its parent's wait() is missing
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _signal(pids: set[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


class ProcessSet:
    """Processes of one local federation: each in its own session, all marked with one token."""

    def __init__(self, log_dir: Path, path_prefix: Path | None = None) -> None:
        self.token = uuid.uuid4().hex
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.path_prefix = path_prefix
        self.processes: dict[str, subprocess.Popen] = {}
        self._logs: list[IO[bytes]] = []
        _LIVE.append(self)

    def environment(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        # Flower's telemetry would report every start to Flower's servers: off, as in an offline deployment.
        env = {**os.environ, TOKEN_VARIABLE: self.token, "PYTHONUNBUFFERED": "1", "FLWR_TELEMETRY_ENABLED": "0",
               **(extra or {})}
        if self.path_prefix is not None:
            env["PATH"] = f"{self.path_prefix}{os.pathsep}{env.get('PATH', '')}"
        return env

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def start(self, name: str, args: Sequence[str], env: Mapping[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen:
        """Start `args` in a new session, output to `<log_dir>/<name>.log`."""
        log = open(self.log_path(name), "ab")  # pylint: disable=consider-using-with
        self._logs.append(log)
        process = subprocess.Popen(  # pylint: disable=consider-using-with
            list(args), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            env=self.environment(env), cwd=cwd,
        )
        self.processes[name] = process
        return process

    def stop_one(self, name: str, signum: int = signal.SIGKILL) -> None:
        """Kill one process and its tree at once (a machine that dies), leaving the others running."""
        process = self.processes[name]
        tree = {process.pid, *descendants([process.pid])}
        _signal(tree, signum)
        process.wait(timeout=30)

    def all_pids(self) -> set[int]:
        """Every live process started here or by them."""
        roots = [p.pid for p in self.processes.values() if p.poll() is None]
        return {pid for pid in {*roots, *descendants(roots), *processes_with_token(self.token)} if _alive(pid)}

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM everything, SIGKILL what is left after `grace` seconds; reap; close logs. Idempotent."""
        pids = self.all_pids()
        _signal(pids, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while (pids := self.all_pids()) and time.monotonic() < deadline:
            _signal(pids, signal.SIGTERM)  # also reaches children started while the others shut down
            time.sleep(0.2)
        for _ in range(5):
            if not (pids := self.all_pids()):
                break
            _signal(pids, signal.SIGKILL)
            time.sleep(0.2)
        for process in self.processes.values():
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL above makes this unreachable
                pass
        for log in self._logs:
            log.close()
        self._logs.clear()
        if self in _LIVE:
            _LIVE.remove(self)


def stop_all() -> None:
    """Stop every ProcessSet still running (atexit and signal handlers)."""
    for process_set in list(_LIVE):
        process_set.stop(grace=5.0)


def _interrupt(signum: int, frame: object) -> None:  # pylint: disable=unused-argument
    raise KeyboardInterrupt(f"signal {signum}")


def install_signal_handlers() -> None:
    """SIGTERM and SIGHUP behave like Ctrl-C: KeyboardInterrupt, so `with LocalFederation(...)` stops everything."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)


atexit.register(stop_all)
