"""Flower's fixed waits, shortened where a deployed round would otherwise spend most of its time waiting.

Flower 1.41 moves a message as metadata first and its arrays as separate objects after, and whoever receives the
metadata first pulls the objects, retrying an object that has not arrived yet after 1 s, then 2, 4, up to 10 s.
A SuperNode stores a message (which hands the task to the ClientApp) before it has pulled the objects, and the
server pulls a reply's objects as the node is still pushing them, so nearly every transfer hits that backoff: with
its idle polls (3 s, see `NodePacing`) a round of the main job took 15-30 s deployed against 0.2 s simulated.

Here a pull from the SuperLink retries after 0.2 s (then 0.4, 0.8, 1 s at most), a pull of the ClientApp from its
own SuperNode after 20 ms (up to 0.5 s); the number of tries and the total time allowed stay Flower's. Each
process applies this to the Flower module it runs (`prompt_object_pulls`):
- the SuperNode: `flwr.supernode.start_client_internal` (pulling a message's objects from the SuperLink);
- the ClientApp worker: `flwr.supernode.runtime.run_clientapp` (pulling them from its SuperNode);
- the ServerApp: `flwr.superlink.grid.http_grid` (pulling the replies' objects from the SuperLink).

One wait is made longer: the SuperLink's SQLite statements wait up to 60 s for a lock (Flower: 5 s). With 30 nodes
on one 2-core host, a write could wait longer than 5 s, and Flower then answers the request with an error (HTTP 500):
a node's reply or a message was lost and the round waited for it in vain. And a ServerApp's task token lives
10 heartbeats (5 minutes; Flower: 2, one minute): on that overloaded SuperLink a heartbeat could take longer than a
minute to be served, the token expired, and the ServerApp's next request was refused (401), which makes it exit
mid-run (`superlink_main`). Nodes' own heartbeats keep Flower's patience, so a dead node is noticed as before.
"""

from __future__ import annotations

import functools
import sys
import time
from types import ModuleType
from typing import Any

# (first retry, longest wait) in seconds, per puller; Flower's own are (1, 10). A pull from the SuperLink costs its
# CPU (~10 ms a request, the SuperLink being a single Python process), so those retry later than the worker's pulls
# from its own SuperNode, which cost the node alone.
FROM_SUPERLINK = (0.2, 1.0)
FROM_SUPERNODE = (0.02, 0.5)
SQLITE_BUSY_TIMEOUT_MS = 60_000  # Flower's: 5,000
TASK_HEARTBEAT_PATIENCE = 10  # heartbeats (30 s each) a task token outlives its last one; Flower's: 2


def prompt_object_pulls(module: ModuleType, function: str = "pull_objects",
                        retries: tuple[float, float] = FROM_SUPERLINK) -> None:
    """Make `module`'s calls of Flower's object-pulling `function` retry after `retries` = (first, longest wait)."""
    original = getattr(module, function)
    if isinstance(original, functools.partial):  # already done
        return
    first, longest = retries
    setattr(module, function, functools.partial(original, initial_backoff=first, backoff_cap=longest))


class NodePacing:
    """Stands in for the `time` module inside Flower's SuperNode loop (`flwr.supernode.start_client_internal`).

    That module sleeps a fixed 3 s after a pull that brought no message, and 0.5 s between checks whether the
    ClientApp's reply (or a pushed object) is ready. An empty pull here waits `floor`, growing by half each time
    up to `ceiling`; any other wait means a message is being handled, so it takes `busy` at most and the next
    empty pull starts again from `floor`.
    """

    IDLE_POLL = 3.0  # the literal Flower's loop sleeps after an empty pull

    def __init__(self, floor: float = 0.05, ceiling: float = 1.0, busy: float = 0.01, clock: Any = time) -> None:
        self.floor, self.ceiling, self.busy = floor, ceiling, busy
        self.interval = floor
        self._clock = clock

    def sleep(self, seconds: float) -> None:
        if seconds >= self.IDLE_POLL:
            wait, self.interval = self.interval, min(self.interval * 1.5, self.ceiling)
        else:
            wait, self.interval = min(seconds, self.busy), self.floor
        self._clock.sleep(wait)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._clock, name)


def pace_supernode() -> NodePacing:
    """Prompt polling and object pulls for Flower's SuperNode loop in this process; returns the pacing in use."""
    from flwr.supernode import start_client_internal

    pacing = NodePacing()
    start_client_internal.time = pacing  # type: ignore[attr-defined]
    prompt_object_pulls(start_client_internal)
    return pacing


def wait_longer_for_sqlite_locks() -> None:
    """Make every SQLite connection Flower opens from now on wait `SQLITE_BUSY_TIMEOUT_MS` for a lock."""
    from flwr.supercore import sql_mixin  # pylint: disable=import-outside-toplevel

    sql_mixin.SQLITE_PRAGMAS = tuple((name, str(SQLITE_BUSY_TIMEOUT_MS) if name == "busy_timeout" else value)
                                     for name, value in sql_mixin.SQLITE_PRAGMAS)


def keep_task_tokens_longer() -> None:
    """Let a ServerApp's or ClientApp's task token live `TASK_HEARTBEAT_PATIENCE` heartbeats (Flower: 2, i.e. 60 s)."""
    from flwr.supercore.corestate import sql_corestate  # pylint: disable=import-outside-toplevel

    sql_corestate.HEARTBEAT_PATIENCE = TASK_HEARTBEAT_PATIENCE


def superlink_main() -> None:
    """`flower-superlink` with SQLite's busy timeout at `SQLITE_BUSY_TIMEOUT_MS` and task tokens kept for
    `TASK_HEARTBEAT_PATIENCE` heartbeats (run by fedsim's command shims)."""
    from flwr.superlink.cli import flower_superlink  # pylint: disable=import-outside-toplevel

    wait_longer_for_sqlite_locks()
    keep_task_tokens_longer()
    sys.argv[0] = "flower-superlink"
    sys.exit(flower_superlink())
