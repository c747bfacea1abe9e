"""The round log: what came back from the clients since the recorder last asked, keyed by partition id.

It holds data only. A client's failure is an error reply as the engine delivered it; a reply fedsim replaced (a
rejected one, or a valid one of a skipped round) arrives here as a `Rejection` or as the `skipped` flag, so the
error reply the strategy got in its place is never read back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from flwr.app import Message, MessageType

from ..reply_checks import reply_kind


@dataclass(frozen=True)
class Rejection:
    """A reply the server refused: from which partition and node, of which kind (train/evaluate), and why."""

    partition: int
    node_id: int
    kind: str
    reason: str


@dataclass(frozen=True)
class NodeRecord:
    """A node the server saw: the partition it claimed (None: it named none), accepted or refused, and why."""

    node_id: int
    partition: int | None
    status: str
    reason: str = ""


@dataclass
class RoundLog:
    """Metrics per partition id, failures, rejections, whether the round was skipped, and the nodes seen for the
    first time."""

    train: dict[int, dict[str, float]] = field(default_factory=dict)
    evaluate: dict[int, dict[str, float]] = field(default_factory=dict)
    failures: list[tuple[int, str]] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    skipped: bool = False  # too few valid training replies: nothing was aggregated
    nodes: list[NodeRecord] = field(default_factory=list)

    def add_replies(self, received: Sequence[Message], handed: Sequence[Message],
                    partition_of: Callable[[int], int]) -> None:
        """One batch: `received` as the engine delivered it, `handed` as the strategy got it (same order). Errors
        among `received` are the clients' failures; metrics come from the replies the strategy got intact."""
        self.failures += [(partition_of(reply.metadata.src_node_id), str(reply.error.reason))
                          for reply in received if reply.has_error()]
        for reply in handed:
            if not reply.has_error():
                self._add_metrics(reply, partition_of(reply.metadata.src_node_id))

    def _add_metrics(self, reply: Message, partition: int) -> None:
        target = {MessageType.TRAIN: self.train, MessageType.EVALUATE: self.evaluate}.get(reply_kind(reply))
        if target is not None:
            target[partition] = {key: value for record in reply.content.metric_records.values()
                                 for key, value in record.items() if isinstance(value, (int, float))}
