"""The deployed ServerApp's Grid: Flower's, with replies collected as soon as they arrive.

Flower 1.41's deployment Grid pushes a round's messages, then looks for replies every 3 s, so every exchange (a
round has two: train and evaluate) costs up to 3 s more than the clients need. `PromptGrid` pushes the same way
and looks again after 10 ms, growing by half each time up to 0.5 s: a reply is noticed within a few percent of its
arrival, and a long round costs a few requests a second.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

from ..grid.wrapper import GridWrapper

FIRST_LOOK = 0.01
LONGEST_WAIT = 0.5


class PromptGrid(GridWrapper):
    """The Deployment Runtime's Grid with `send_and_receive` collecting replies promptly (see the module docstring)."""

    def __init__(self, inner: Grid, first_look: float = FIRST_LOOK, longest_wait: float = LONGEST_WAIT) -> None:
        super().__init__(inner)
        self.first_look, self.longest_wait = first_look, longest_wait

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Push `messages`, then collect replies until each message has one or `timeout` seconds have passed."""
        waiting = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        wait = self.first_look
        while waiting:
            arrived = list(self.pull_messages(waiting))
            replies.extend(arrived)
            waiting.difference_update(reply.metadata.reply_to_message_id for reply in arrived)
            if not waiting or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(wait if deadline is None else max(0.0, min(wait, deadline - time.monotonic())))
            wait = self.first_look if arrived else min(wait * 1.5, self.longest_wait)
        return replies
