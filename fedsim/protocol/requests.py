"""Client requests: work a strategy asks of a client in a train round, beyond local training.

A strategy class lists its requests in `client_requests`. Each is a key the strategy puts in the train ConfigRecord
and the functions that answer it on the client: `before` runs on the received model before training and returns
metrics for the reply; `training` changes the round's local training (per-row loss weights, `BatchTerm`s added to
the loss: AgnosticFair's kernel weights and fairness penalty); `after` runs once the model is trained and may add
records to the reply. fedsim's ClientApp answers exactly the requests of the configured strategy, in the order
listed; a request the config does not carry costs nothing. Engines that batch clients treat any asked request as
"needs the full ClientApp".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from flwr.app import ArrayRecord, ConfigRecord, RecordDict

if TYPE_CHECKING:
    import torch


class LocalRound(Protocol):
    """What a client offers a request's functions in one train round."""

    config: ConfigRecord  # the train instruction's config (the strategy's per-node keys included)
    state: RecordDict  # the node's state across rounds (Flower's `context.state`)
    received: ArrayRecord  # the global model as received
    num_classes: int

    def evaluate(self, arrays: ArrayRecord | None = None, split: str = "train", group_counts: bool = False
                 ) -> dict[str, float]:
        """`loss` and `accuracy` of `arrays` (None: the received model) on the client's `train` or `validation`
        rows (validation falls back to training rows on a client too small to hold any out); with `group_counts`
        and data with a sensitive attribute, also the group counts (`fedsim.protocol.group_counts`)."""

    def label_counts(self) -> list[int]:
        """How many training rows of each class the client holds (length: the data set's class count)."""

    def rows(self, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """The client's (inputs, labels) on its `train` or `validation` rows, as training sees them."""

    def sensitive(self, split: str = "train") -> torch.Tensor | None:
        """The binary sensitive attribute (0/1) of the same rows; None on data without one."""


class BatchTerm(Protocol):
    """A term added to a client's training loss from a minibatch's logits and the positions of its rows among the
    client's training rows (`rows("train")`), so that it can read per-row values it holds (AgnosticFair's weighted
    fairness penalty). A full batch makes it the term of the client's whole objective."""

    def __call__(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class TrainingChange:
    """What a request changes in the round's local training: per-row loss weights (one per training row; they
    multiply the weights of the client's own local debiasing, if any) and terms added to the loss."""

    sample_weights: torch.Tensor | None = None
    batch_terms: tuple[BatchTerm, ...] = ()


BeforeTraining = Callable[[LocalRound], Mapping[str, float]]
ChangesTraining = Callable[[LocalRound], TrainingChange]
AfterTraining = Callable[[LocalRound, ArrayRecord, RecordDict], None]


@dataclass(frozen=True)
class ClientRequest:
    """A config key and its answers. A flag request (`by_presence=False`) is asked when its value is true; a value
    request (`by_presence=True`, e.g. FedCE's coefficient, which may be 0.0) whenever the key is present."""

    key: str
    before: BeforeTraining | None = None
    after: AfterTraining | None = None
    by_presence: bool = False
    training: ChangesTraining | None = None  # runs after `before`, on the received model's round

    def asked(self, config: ConfigRecord) -> bool:
        return self.key in config and (self.by_presence or bool(config[self.key]))
