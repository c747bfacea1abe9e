"""A SuperNode's warm ClientApp worker: one long-lived process runs all of a node's ClientApp tasks.

Under Flower's default `--isolation subprocess`, a SuperNode starts one `flwr-clientapp` process per message, which
imports torch and the app and loads the data set again each time: seconds per message on 2 cores. With
`--isolation process` a SuperNode leaves its tasks to a process of the operator's choosing. This is that process:
it asks the SuperNode's Runtime API (on the node's loopback, signed with the node's SuperExec secret) for ClientApp
tasks and runs each itself, so the ClientApp, torch, the data set and its partition stay loaded from one message
to the next (fedsim caches the federation per process).

Per task it does what `flwr-clientapp` does: pull the message, context, run and FAB with the task's token, call the
ClientApp, push the reply and the updated context, with a heartbeat while it runs; each task runs in a thread of its
own (see `serve`). Python cannot unload modules,
so a worker serves one FAB: it does not import the app before the first task (a FAB built from a clone must run its
own code, not the installed one), and a task from another FAB makes it start afresh as a new process that runs
that task first.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flwr.clientapp import ClientApp
    from flwr.supercore.runtime import RuntimeHttpClient

WORKER_SCRIPT = Path(__file__).resolve()
PENDING_TASK_VARIABLE = "FEDSIM_WORKER_PENDING_TASK"  # "<token> <fab hash>": the task a restarted worker runs first
ACQUIRE_METHOD = "/flwr.proto.Runtime/AcquireTask"

logger = logging.getLogger("fedsim.worker")


@dataclass
class Pacing:
    """How often to ask for a task: right after one, every `floor` seconds, growing by half per empty answer up to
    `ceiling` (messages come in bursts: a train message, then an evaluate message once the server has aggregated)."""

    floor: float = 0.01
    ceiling: float = 0.5
    interval: float = field(init=False)

    def __post_init__(self) -> None:
        self.interval = self.floor

    def after_task(self) -> None:
        self.interval = self.floor

    def wait(self) -> None:
        time.sleep(self.interval)
        self.interval = min(self.interval * 1.5, self.ceiling)


class WarmApp:
    """The ClientApp of one FAB, loaded on first use and kept."""

    def __init__(self) -> None:
        self.fab_hash: str | None = None
        self.app: ClientApp | None = None
        self._lock = threading.Lock()

    def serves(self, fab_hash: str) -> bool:
        return self.fab_hash is None or self.fab_hash == fab_hash

    def load(self, run: Any, fab: Any) -> ClientApp:
        with self._lock:
            return self._load(run, fab)

    def _load(self, run: Any, fab: Any) -> ClientApp:
        if self.app is None:
            from flwr.cli.install import install_from_fab
            from flwr.clientapp.utils import get_load_client_app_fn

            install_from_fab(fab.content, skip_prompt=True)
            load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
            self.app, self.fab_hash = load(run.fab_id, run.fab_version, fab.hash_str), fab.hash_str
        return self.app


def _task_client(address: str, token: str) -> RuntimeHttpClient:
    from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    return RuntimeHttpClient.from_server_address(
        server_address=address, insecure=True, root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                      RuntimeTokenHttpInterceptor(token)],
        retry_invoker=make_simple_http_retry_invoker(),
    )


def _heartbeat(client: RuntimeHttpClient) -> Any:
    """Flower's task heartbeat, except that a task the SuperNode gave up on is only logged: the worker lives on."""
    import httpx
    from flwr.proto.runtime_pb2 import SendTaskHeartbeatRequest  # pylint: disable=no-name-in-module
    from flwr.supercore.heartbeat import HeartbeatSender

    def beat() -> bool:
        try:
            response = client.SendTaskHeartbeat(SendTaskHeartbeatRequest())
        except httpx.TransportError:
            return False
        except httpx.HTTPStatusError as error:
            if error.response.status_code in (503, 504):
                return False
            raise
        if not response.success:
            logger.warning("the SuperNode no longer expects this task's reply")
        return True

    sender = HeartbeatSender(beat)
    sender.start()
    return sender


def _run_task_logged(address: str, token: str, warm: WarmApp) -> None:
    try:
        run_task(address, token, warm)
    except Exception as error:  # pylint: disable=broad-exception-caught  # the SuperNode stopped answering, say
        logger.error("a ClientApp task could not report back to the SuperNode: %s", error)


def run_task(address: str, token: str, warm: WarmApp) -> None:
    """One ClientApp task, as `flwr-clientapp` runs it, with the ClientApp kept in `warm`."""
    from flwr.app import Error, Message
    from flwr.clientapp.client_app import LoadClientAppError
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

    client = _task_client(address, token)
    heartbeat = _heartbeat(client)
    message = context = reply = None
    status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
    try:
        message, context, run, fab = pull_task_input(client)
        app = warm.load(run, fab)
        reply = app(message=message, context=context)

        status, details = SubStatus.COMPLETED, ""
    except Exception as error:  # pylint: disable=broad-exception-caught  # as flwr-clientapp: the server gets an error reply
        code = (ErrorCode.LOAD_CLIENT_APP_EXCEPTION if isinstance(error, LoadClientAppError)
                else ErrorCode.CLIENT_APP_RAISED_EXCEPTION)
        details = f"{type(error)}:<'{error}'>"
        logger.error("ClientApp raised an exception", exc_info=error)
        if message is not None:
            reply = Message(Error(code=code, reason=details), reply_to=message)
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
            push_task_output(client=client, context=context, sub_status=status, details=details)
        finally:
            heartbeat.stop()
            client.close()


def _acquire_client(address: str, secret: bytes) -> RuntimeHttpClient:
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor, SuperExecAuthHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    return RuntimeHttpClient.from_server_address(
        server_address=address, insecure=True, root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec"),
                      SuperExecAuthHttpInterceptor(master_secret=secret, protected_methods={ACQUIRE_METHOD})],
        retry_invoker=make_simple_http_retry_invoker(),
    )


def _restart_for(token: str, fab_hash: str) -> None:
    """Become a fresh worker that runs this task (of another FAB) first; the token travels in the environment,
    which only this user can read."""
    os.environ[PENDING_TASK_VARIABLE] = f"{token} {fab_hash}"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, str(WORKER_SCRIPT), *sys.argv[1:]])


def serve(address: str, secret: bytes, pacing: Pacing | None = None) -> None:
    """Take and run the node's ClientApp tasks until the process is stopped."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=no-name-in-module
    from flwr.supercore.constant import TaskType

    pacing = pacing or Pacing()
    warm = WarmApp()
    pending = os.environ.pop(PENDING_TASK_VARIABLE, "")
    if pending:
        token, _ = pending.split(" ", 1)
        run_task(address, token, warm)
    acquire = _acquire_client(address, secret)
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value])
    while True:
        answer = acquire.AcquireTask(request)
        if not (answer.HasField("task") and answer.token):
            pacing.wait()
            continue
        if answer.task.fab_hash and not warm.serves(answer.task.fab_hash):
            acquire.close()
            _restart_for(answer.token, answer.task.fab_hash)
        # Each task in its own thread, so that one that never completes (its message's objects never reached the
        # SuperNode, say, after the SuperLink crashed mid-transfer) does not hold up the tasks after it, as a
        # separate `flwr-clientapp` process would not. The SuperNode hands out one message at a time, so tasks
        # do not otherwise overlap.
        threading.Thread(target=_run_task_logged, args=(address, answer.token, warm),
                         name=f"task-{answer.task.task_id}", daemon=True).start()
        pacing.after_task()


def _prompt_object_pulls() -> None:
    """`fedsim.deploy.pacing` for this process's pulls of message objects from the SuperNode. Loaded by its file, as
    this worker is (no `fedsim` package may be imported before the FAB's ClientApp is)."""
    import importlib.util

    from flwr.supernode.runtime import run_clientapp

    spec = importlib.util.spec_from_file_location("_fedsim_worker_pacing", WORKER_SCRIPT.parent / "pacing.py")
    assert spec is not None and spec.loader is not None
    pacing = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pacing)
    pacing.prompt_object_pulls(run_clientapp, "pull_and_inflate_object_from_tree", pacing.FROM_SUPERNODE)


def worker_command(runtime_address: str, secret_file: Path, parent_pid: int | None = None) -> list[str]:
    """How to start a worker: by its file, not `-m fedsim...`, so that no `fedsim` package is imported before the
    FAB's ClientApp is (a FAB built from a clone carries its own `fedsim`)."""
    command = [sys.executable, str(WORKER_SCRIPT), "--runtime-api-address", runtime_address,
               "--secret-file", str(secret_file)]
    return command + (["--parent-pid", str(parent_pid)] if parent_pid is not None else [])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="fedsim's warm ClientApp worker for one SuperNode")
    parser.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API (HOST:PORT)")
    parser.add_argument("--secret-file", required=True, type=Path, help="the SuperNode's SuperExec secret")
    parser.add_argument("--parent-pid", type=int, default=None, help="stop when this process (the SuperNode) ends")
    args = parser.parse_args(argv)
    if sys.path and Path(sys.path[0]).resolve() == WORKER_SCRIPT.parent:
        sys.path.pop(0)  # run as a script: its folder is not a place to import from
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    import torch  # noqa: F401  # pylint: disable=unused-import,import-outside-toplevel  # warm before the first task

    _prompt_object_pulls()
    if args.parent_pid is not None:
        from flwr.supercore.app_utils import start_parent_process_monitor

        start_parent_process_monitor(args.parent_pid)
    try:
        serve(args.runtime_api_address, args.secret_file.read_bytes())
    except KeyboardInterrupt:  # the SuperNode ended, or the node is being stopped
        pass


if __name__ == "__main__":
    main()
