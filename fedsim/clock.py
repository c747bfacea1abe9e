"""The virtual clock: how long a run would take on the devices of the experiment's device model (`fedsim.devices`).

Every run has one. A client's call lasts its compute (the samples it trains on over its speed) plus its transfers
(the message sizes over its link's bandwidth each way, plus the latency each way). A synchronous round lasts until
its slowest training client replied, or until `server.deadline`: a reply that would arrive later is a straggler's,
dropped before the strategy sees it, and a round with a straggler or an offline client lasts the whole deadline
(the server cannot know that nobody else is coming). Without a deadline an offline client costs the round only its
round trip: the server learns at once that the node is gone. Only training counts: federated evaluation and
strategy stages are measurements or set-up, and the asynchronous loop (`fedsim.async_rounds`) keeps its own events
on the same clock.

The message sizes are the bytes of their arrays (Flower sends an array's buffer as it is); configs and metrics are a
few hundred bytes, left out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord
from flwr.common.constant import ErrorCode

from .devices import DeviceModel, device_model
from .protocol.keys import CONFIG_RECORD, LOCAL_EPOCHS_KEY, NUM_EXAMPLES, ROUND_KEY

OFFLINE = "offline: the device model's availability draw (devices.availability) had this client away"


def message_bytes(message: Message) -> int:
    """The bytes of every array a message carries (0 for an error reply)."""
    if message.has_error():
        return 0  # (RecordDict's typed views copy the records: reading the items directly is ~30x cheaper)
    return sum(len(array.data) for record in message.content.values() if isinstance(record, ArrayRecord)
               for array in record.values())


def trained_samples(sent: Message, reply: Message, local_epochs: int) -> int:
    """Rows a client trained on for `reply`: its `num-examples` times the epochs it was told (`local-epochs` in the
    train config, else the experiment's `client.local_epochs`)."""
    if reply.has_error():
        return 0
    metrics = [record for record in reply.content.values() if isinstance(record, MetricRecord) and
               NUM_EXAMPLES in record]
    rows = int(metrics[0][NUM_EXAMPLES]) if metrics else 0
    return rows * sent_epochs(sent, local_epochs)


def sent_epochs(sent: Message, local_epochs: int) -> int:
    """The epochs a train message tells its client: `local-epochs` in its config, else the experiment's."""
    config = _config(sent)
    return int(config[LOCAL_EPOCHS_KEY]) if LOCAL_EPOCHS_KEY in config else local_epochs


@dataclass
class RoundTiming:
    """One synchronous round on the clock: its simulated seconds and the partitions cut off by the deadline."""

    seconds: float
    late: dict[int, float]  # partition -> the seconds its reply would have taken


class VirtualClock:
    """Simulated seconds since the run began (`now`), advanced by each synchronous round or asynchronous event."""

    def __init__(self, devices: DeviceModel, local_epochs: int, deadline: float | None = None) -> None:
        self.devices = devices
        self.local_epochs = int(local_epochs)
        self.deadline = None if deadline is None else float(deadline)
        self.now = 0.0

    @classmethod
    def from_experiment(cls, experiment: Mapping[str, Any], label_counts: Any = None) -> VirtualClock:
        devices = device_model(experiment["devices"], int(experiment["num_clients"]), int(experiment["seed"]),
                               label_counts)
        deadline = experiment["server"].get("deadline")
        return cls(devices, int(experiment["client"]["local_epochs"]), None if deadline is None else float(deadline))

    def offline(self, partition: int, call: int) -> bool:
        """Whether the client is away for call `call` (a synchronous round, or an asynchronous dispatch)."""
        return not self.devices.online(partition, call)

    def call_seconds(self, partition: int, samples: int, bytes_down: int, bytes_up: int) -> float:
        return self.devices.profile(partition).duration(samples, bytes_down, bytes_up)

    def reply_seconds(self, partition: int, sent: Message, reply: Message) -> float:
        """The simulated seconds of one training call, from what was sent and what came back."""
        return self.call_seconds(partition, trained_samples(sent, reply, self.local_epochs), message_bytes(sent),
                                 message_bytes(reply))

    def round_trip(self, partition: int) -> float:
        return 2.0 * self.devices.profile(partition).latency

    def synchronous_round(self, partitions: Sequence[int], sent: Sequence[Message], replies: Sequence[Message],
                          offline: Sequence[int]) -> RoundTiming:
        """Time one round: `replies[i]` answers `sent[i]` from `partitions[i]`; `offline` were never reached. The
        clock moves on by the round's seconds."""
        seconds = {partition: self.reply_seconds(partition, message, reply)
                   for partition, message, reply in zip(partitions, sent, replies, strict=True)}
        late = {p: s for p, s in seconds.items() if self.deadline is not None and s > self.deadline}
        slowest = max([s for p, s in seconds.items() if p not in late] + [self.round_trip(p) for p in offline],
                      default=0.0)
        if self.deadline is not None and (late or offline):
            slowest = self.deadline
        self.now += slowest
        return RoundTiming(slowest, late)


def is_training(messages: Sequence[Message]) -> bool:
    return bool(messages) and all(m.metadata.message_type == MessageType.TRAIN for m in messages)


def _config(message: Message) -> ConfigRecord | dict:
    record = message.content.get(CONFIG_RECORD) if not message.has_error() else None
    return record if isinstance(record, ConfigRecord) else {}


def round_of(message: Message) -> int:
    config = _config(message)
    return int(config[ROUND_KEY]) if ROUND_KEY in config else 0


def error_reply(message: Message, reason: str) -> Message:
    """The error reply a message gets when the clock decides its client never answers in time."""
    return Message(Error(ErrorCode.REPLY_MESSAGE_UNAVAILABLE, reason), reply_to=message)


SendFn = Callable[[list[Message]], list[Message]]


def clocked_round(clock: VirtualClock, messages: list[Message], partition_of: Callable[[int], int],
                  send: SendFn) -> list[Message]:
    """One synchronous training exchange on the clock: offline clients are not called (their replies are errors),
    the rest are sent with `send`, and replies past the deadline become errors. Replies come back in any order."""
    server_round = round_of(messages[0])
    away = [m for m in messages if clock.offline(partition_of(m.metadata.dst_node_id), server_round)]
    reached = [m for m in messages if not any(m is gone for gone in away)]
    replies = list(send(reached)) if reached else []
    sent = {m.metadata.message_id: m for m in reached}
    answered = [(i, sent[r.metadata.reply_to_message_id]) for i, r in enumerate(replies)
                if r.metadata.reply_to_message_id in sent]
    partitions = [partition_of(message.metadata.dst_node_id) for _, message in answered]
    timing = clock.synchronous_round(partitions, [m for _, m in answered], [replies[i] for i, _ in answered],
                                     [partition_of(m.metadata.dst_node_id) for m in away])
    for (i, message), partition in zip(answered, partitions, strict=True):
        if partition in timing.late:
            replies[i] = error_reply(message, f"straggler: its reply would take {timing.late[partition]:.1f} s of "
                                              f"simulated time, past server.deadline ({clock.deadline:g} s)")
    return [error_reply(m, OFFLINE) for m in away] + replies
