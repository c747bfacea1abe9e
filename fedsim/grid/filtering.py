"""Reply filtering: what of one batch of replies a strategy may see.

Every train and evaluate reply goes through `fedsim.reply_checks`; the relative update-norm bound compares each
reply with the rest of its batch, so filtering works on whole batches. A bad reply is replaced by an error reply
that names the problem (every Flower strategy skips error replies, and fedsim's log their reason). When fewer than
`min_valid_replies` training replies are valid, the valid ones are replaced too: the round is skipped, the
strategy aggregates nothing and the global model stays. What was replaced comes back as data (`Filtered`).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import Error, Message, MessageType

from ..compression.base import CorruptPayload
from ..reply_checks import ReplyLimits, check_reply, outsized_updates, reply_kind
from .round_log import Rejection

logger = logging.getLogger("fedsim")

# The start of the reason an error reply carries in place of a replaced reply: for people reading a strategy's log.
REJECTED_PREFIX = "rejected by fedsim: "
SKIPPED_PREFIX = "round skipped by fedsim: "


@dataclass(frozen=True)
class Filtered:
    """A filtered batch: the replies for the strategy (in the order given), the rejected ones, and whether too few
    valid training replies were left (then every valid one was withheld)."""

    replies: list[Message]
    rejections: list[Rejection]
    skipped: bool
    norms: tuple[float, ...] = ()  # update norms of the training replies that passed


def as_error(reply: Message, reason: str) -> Message:
    """An error reply with `reply`'s metadata (same sender, same message it answers)."""
    return Message(error=Error(code=0, reason=reason), metadata=copy.deepcopy(reply.metadata))


Decode = Callable[[Message, "Message | None"], Message]


def filter_replies(replies: Sequence[Message], sent: Mapping[str, Message], limits: ReplyLimits,
                   partition_of: Callable[[int], int], earlier_norms: Sequence[float] = (),
                   min_valid_replies: int | None = None, decode: Decode | None = None) -> Filtered:
    """`replies` with each bad one replaced by an error reply, and every valid one when too few training replies
    are valid. `sent` are the messages answered, by message id (an answer to none is not compared with one).

    `decode` (a compressed reply and the message it answers -> the reply as trained; `CorruptPayload` when it does
    not decode) runs first, so that the checks and the strategy see decoded updates.

    An asynchronous run checks its replies one at a time: `earlier_norms` (recent accepted updates' norms) then
    stand in for the rest of the batch in the relative norm bound, and `min_valid_replies` = 1 keeps a lone reply."""
    replies, undecoded = _decoded(replies, sent, decode)
    problems, norms = _problems(replies, sent, limits, partition_of, earlier_norms, undecoded)
    rejections = [_rejection(reply, problem, partition_of(reply.metadata.src_node_id))
                  for reply, problem in zip(replies, problems, strict=True) if problem is not None]
    checked = [reply if problem is None else as_error(reply, REJECTED_PREFIX + problem)
               for reply, problem in zip(replies, problems, strict=True)]
    valid = sum(reply_kind(reply) == MessageType.TRAIN and not reply.has_error() for reply in checked)
    trained = any(reply_kind(reply) == MessageType.TRAIN for reply in checked)
    minimum = limits.min_valid_replies if min_valid_replies is None else min_valid_replies
    if not trained or valid >= minimum:
        return Filtered(checked, rejections, skipped=False, norms=norms)
    return Filtered(_withheld(checked, valid, minimum), rejections, skipped=True)


def _decoded(replies: Sequence[Message], sent: Mapping[str, Message], decode: Decode | None
             ) -> tuple[list[Message], dict[int, str]]:
    """The replies decoded, and the problem of each (by position) that did not decode (it stays as it came)."""
    if decode is None:
        return list(replies), {}
    decoded, problems = [], {}
    for i, reply in enumerate(replies):
        try:
            decoded.append(decode(reply, sent.get(reply.metadata.reply_to_message_id)))
        except CorruptPayload as error:
            decoded.append(reply)
            problems[i] = f"corrupt compressed update: {error}"
        except Exception as error:  # pylint: disable=broad-exception-caught  # a codec's bug is no server crash
            decoded.append(reply)
            problems[i] = f"undecodable compressed update ({type(error).__name__}: {error})"
    return decoded, problems


def _problems(replies: Sequence[Message], sent: Mapping[str, Message], limits: ReplyLimits,
              partition_of: Callable[[int], int], earlier_norms: Sequence[float] = (),
              undecoded: Mapping[int, str] | None = None) -> tuple[list[str | None], tuple[float, ...]]:
    """Each reply's problem, or None, and the norms of the updates that passed; the relative norm bound applies to
    the replies whose norm was measured, compared with each other and with `earlier_norms`. `undecoded`: the
    problems already found (a payload that did not decode), by position."""
    undecoded = undecoded or {}
    references: dict[int, np.ndarray] = {}  # the sent arrays' values, decoded once per batch
    verdicts = [(undecoded[i], None) if i in undecoded else
                check_reply(reply, sent.get(reply.metadata.reply_to_message_id), limits,
                            partition_of(reply.metadata.src_node_id), references) for i, reply in enumerate(replies)]
    problems = [problem for problem, _ in verdicts]
    measured = {i: norm for i, (problem, norm) in enumerate(verdicts) if problem is None and norm is not None}
    if limits.update_norm_factor is not None:  # norms are only measured for finite, well-shaped training replies
        earlier = list(earlier_norms)
        outsized = outsized_updates(earlier + list(measured.values()), limits.update_norm_factor)[len(earlier):]
        for i, problem in zip(measured, outsized, strict=True):
            problems[i] = problem
    return problems, tuple(float(norm) for i, norm in measured.items() if problems[i] is None)


def _rejection(reply: Message, problem: str, partition: int) -> Rejection:
    rejection = Rejection(partition, reply.metadata.src_node_id, reply_kind(reply), problem)
    logger.warning("rejected the %s reply of partition %s (node %s): %s", rejection.kind, partition,
                   rejection.node_id, problem)
    return rejection


def _withheld(checked: list[Message], valid: int, minimum: int) -> list[Message]:
    """`checked` with its valid training replies replaced: too few of them to aggregate."""
    reason = f"{valid} valid training replies < server.min_valid_replies = {minimum}"
    logger.warning("%s%s; the global model is kept", SKIPPED_PREFIX, reason)
    return [as_error(reply, SKIPPED_PREFIX + reason)
            if reply_kind(reply) == MessageType.TRAIN and not reply.has_error() else reply for reply in checked]
