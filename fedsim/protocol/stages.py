"""Strategy stages: work a strategy runs through the Grid before its training rounds (FedCollab's pairwise distance
estimation), with a client half the ClientApp answers.

A strategy that has such a stage implements `PreparesFederation.prepare` (`fedsim.protocol.capabilities`) and
declares its client halves in `client_stages`: a name and a function from the client's round (`StageRound`) to the
reply's content. The server sends `Message(content, node, STAGE_MESSAGE_TYPE)` whose ConfigRecord carries the
experiment and `STAGE_KEY` = the name; fedsim's ClientApp runs the declared function and nothing else. Stage
messages are Flower queries: they are neither training nor evaluation, so no round log or reply check counts them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from flwr.app import ArrayRecord, ConfigRecord, RecordDict

if TYPE_CHECKING:
    import torch
    from torch import nn

STAGE_ACTION = "stage"
STAGE_MESSAGE_TYPE = f"query.{STAGE_ACTION}"
STAGE_KEY = "stage"


class StageRound(Protocol):
    """What a client offers a stage function: the message's config and arrays and the client's own rows."""

    config: ConfigRecord  # the stage message's config (the experiment, `STAGE_KEY`, the strategy's keys)
    received: ArrayRecord  # the arrays the stage message carries
    partition_id: int
    num_classes: int
    device: torch.device

    def rows(self, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """The client's (inputs, labels) on its `train` or `validation` rows, attacks and noise applied as in
        training."""

    def sensitive(self, split: str = "train") -> torch.Tensor | None:
        """The binary sensitive attribute (0/1) of the same rows; None on data without one."""

    def model_from(self, arrays: ArrayRecord) -> nn.Module:
        """The experiment's model holding `arrays` (e.g. a global model the stage message carries), on the CPU."""

    def trained(self, arrays: ArrayRecord) -> ArrayRecord:
        """What this client's plain local training makes of `arrays`: the round's settings, data order and local
        work as for a train message of the stage config's round (`ROUND_KEY`) carrying `arrays`."""


ClientStage = Callable[[StageRound], RecordDict]
