"""Bytes on the wire: every message the server sends and every reply it receives, as Flower serialises them.

Flower 1.41 moves a message as its tree of inflatable objects (the message head, its RecordDict, each record,
each Array head and its chunks of at most 5 MB), each deflated to bytes; a node pulls the objects of its message,
and a chunk that repeats within a message crosses once. `wire_bytes` is the sum of those deflated objects' sizes,
computed by Flower's own serialisation, so compressed payloads, configs and metrics all count, and in deployment it
is what the Fleet API's object requests carry (less the transport's framing: HTTP and protobuf headers, TLS).

`CountingGrid` sits directly around the engine's Grid, under node discovery, the virtual clock and the reply
checks: it counts what the engine actually moved (an offline client's message is never sent; a straggler's reply
did arrive). Replies that are errors count too: they cross the wire.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Message
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, no_object_id_recompute

from .wrapper import GridWrapper


def wire_bytes(message: Message) -> int:
    """The bytes of `message` as Flower serialises it for the wire: its deflated objects, each counted once."""
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())


def batch_bytes(messages: Iterable[Message]) -> int:
    """`wire_bytes` summed over a batch; a model shared by the batch's messages is hashed once."""
    with no_object_id_recompute():
        return sum(wire_bytes(message) for message in messages)


class CountingGrid(GridWrapper):
    """The engine's Grid, counting the bytes it sends to clients (`down`) and receives from them (`up`)."""

    def __init__(self, inner) -> None:  # noqa: ANN001  (any Flower Grid)
        super().__init__(inner)
        self.down = 0
        self.up = 0

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        ids = list(self._inner.push_messages(messages))
        self.down += batch_bytes(messages)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self._inner.pull_messages(message_ids))
        self.up += batch_bytes(replies)
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        replies = list(self._inner.send_and_receive(messages, timeout=timeout))  # it gives each message its id
        self.down += batch_bytes(messages)
        self.up += batch_bytes(replies)
        return replies

    def take(self) -> tuple[int, int]:
        """(bytes down, bytes up) since the last call."""
        counted, self.down, self.up = (self.down, self.up), 0, 0
        return counted
