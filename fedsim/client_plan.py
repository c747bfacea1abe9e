"""How fedsim's ClientApp describes a train round and shapes its reply: one description for every engine.

`plan(message, context)` says what a TRAIN message asks of this client: plain local training (`LocalTraining`, every
input of it) or a round that `NeedsClientApp`, with the reason. `reply` builds the one train reply. The ClientApp
(`fedsim.client`) trains a plain plan itself and answers anything else in full; an engine that batches clients
(`fedsim.engines.vectorized`) trains the plans its kernel supports and hands the rest to the ClientApp. A client
behaviour the plan does not describe must therefore make it `NeedsClientApp`: then no engine can skip it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from .attacks import Attack, attacked_data, configured_attack
from .build import train_settings, traits_of
from .data.client_data import client_data
from .data.tensors import ArrayDataset
from .fairness import reweighing_weights
from .faults import Faults, draw_faults
from .node_config import MISBEHAVE, misbehavior, node_federation
from .node_config import partition_id as _partition_id
from .protocol.experiment import experiment_from_record
from .protocol.keys import (
    ARRAYS_RECORD,
    CONFIG_KEY,
    CONFIG_RECORD,
    METRICS_RECORD,
    NUM_EXAMPLES,
    ROUND_KEY,
    TRAIN_ACCURACY,
    TRAIN_LOSS,
)
from .protocol.requests import BatchTerm, ClientRequest, TrainingChange
from .training import LocalObjective, TrainResult, TrainSettings, client_seed, local_objectives

if TYPE_CHECKING:
    from .data.federation import Federation


@dataclass(frozen=True)
class LocalTraining:
    """A train round that is plain local training: `train_local` from `start` on `data`, and nothing else."""

    data: ArrayDataset  # the client's training rows, noise applied
    settings: TrainSettings
    seed: int  # of the data order (`client_seed`)
    start: ArrayRecord  # the global model as received
    objectives: tuple[LocalObjective, ...] = ()  # terms added to cross-entropy (FedProx's proximal term)
    sample_weights: torch.Tensor | None = None  # per-row loss weights (local debiasing), or None
    batch_terms: tuple[BatchTerm, ...] = ()  # terms of a minibatch's logits, from a strategy's request (full round)


@dataclass(frozen=True)
class NeedsClientApp:
    """A train round only the full ClientApp answers, and why."""

    reason: str


def plan(message: Message, context: Context) -> LocalTraining | NeedsClientApp:
    """What this TRAIN message asks of the client `context` describes (its data is loaded only for plain training)."""
    reason = _beyond_local_training(message, context)
    if reason is not None:
        return NeedsClientApp(reason)
    experiment = experiment_from_record(message.content[CONFIG_RECORD])
    partition_id = _partition_id(context)
    federation = node_federation(experiment, context)
    train_data, _ = client_rows(federation, experiment, partition_id, configured_attack(experiment, partition_id))
    return local_training(message, experiment, partition_id, train_data)


def client_attack(experiment: Mapping[str, Any], context: Context) -> Attack | None:
    """This client's attack (`fedsim.attacks`): its node's own `misbehave` instruction, else the experiment's."""
    return misbehavior(context) or configured_attack(experiment, _partition_id(context))


def client_rows(federation: Federation, experiment: Mapping[str, Any], partition_id: int,
                attack: Attack | None) -> tuple[ArrayDataset, ArrayDataset]:
    """The client's (training, validation) rows: its partition's, noise applied (`client_data`), and a data attack's
    on the training rows (validation rows stay clean)."""
    train_data, val_data = client_data(federation, experiment, partition_id)
    seed = int(experiment["seed"])
    return attacked_data(train_data, attack, federation.data.num_classes, seed, partition_id), val_data


def _beyond_local_training(message: Message, context: Context) -> str | None:
    """Why the round is more than local training (None: it is not): checks cheap enough to run before loading data."""
    content = message.content
    if CONFIG_RECORD not in content.config_records or ARRAYS_RECORD not in content.array_records:
        return "the message carries no train config or no model"
    config = content[CONFIG_RECORD]
    if CONFIG_KEY not in config or ROUND_KEY not in config:
        return "the config carries no experiment or no round"
    if MISBEHAVE in context.node_config:
        return f"the node is told to misbehave (node config '{MISBEHAVE}')"
    experiment = experiment_from_record(config)
    attack = configured_attack(experiment, _partition_id(context))
    if attack is not None and not attack.on_data:
        return f"the client is a Byzantine attacker (attack.kind={attack.kind})"
    asked = asked_requests(experiment, config)
    if asked:
        return f"the strategy asks for {', '.join(request.key for request in asked)}"
    faults = draw_faults(experiment, int(config[ROUND_KEY]), _partition_id(context))
    if faults != Faults():
        return f"a fault is drawn this round ({faults})"
    return None


def asked_requests(experiment: Mapping[str, Any], config: ConfigRecord) -> list[ClientRequest]:
    """The configured strategy's client requests that this train config asks, in the order the strategy lists them."""
    return [request for request in traits_of(experiment).client_requests if request.asked(config)]


def local_training(message: Message, experiment: Mapping[str, Any], partition_id: int, train_data: ArrayDataset
                   ) -> LocalTraining:
    """The local training a TRAIN message asks of the client holding partition `partition_id` and `train_data`."""
    config = message.content[CONFIG_RECORD]
    settings = train_settings(experiment, config)
    return LocalTraining(
        data=train_data,
        settings=settings,
        seed=client_seed(int(experiment["seed"]), int(config[ROUND_KEY]), partition_id),
        start=message.content[ARRAYS_RECORD],
        objectives=local_objectives(settings),
        sample_weights=_sample_weights(experiment, train_data),
    )


def changed(training: LocalTraining, change: TrainingChange) -> LocalTraining:
    """`training` as a strategy's request changes it (`ClientRequest.training`): its sample weights times those
    already there (local debiasing), its batch terms after those already there."""
    weights = change.sample_weights
    if weights is not None:
        if weights.shape != (len(training.data),):
            raise ValueError(f"a request's sample weights have shape {tuple(weights.shape)}, the client holds "
                             f"{len(training.data)} training rows")
        if training.sample_weights is not None:
            weights = training.sample_weights * weights
    else:
        weights = training.sample_weights
    return replace(training, sample_weights=weights, batch_terms=training.batch_terms + tuple(change.batch_terms))


def _sample_weights(experiment: Mapping[str, Any], data: ArrayDataset) -> torch.Tensor | None:
    """Per-row loss weights of the configured local debiasing (`client.local_debiasing`), or None."""
    if experiment["client"].get("local_debiasing", "none") != "reweighing" or data.sensitive is None:
        return None
    return reweighing_weights(data.y, data.sensitive)


def reply(message: Message, result: TrainResult, arrays: ArrayRecord) -> Message:
    """The train reply: the trained `arrays`, `num-examples` (n_k, the FedAvg weight), training loss and accuracy."""
    metrics = MetricRecord({NUM_EXAMPLES: result.num_examples, TRAIN_LOSS: result.loss,
                            TRAIN_ACCURACY: result.accuracy})
    return Message(RecordDict({ARRAYS_RECORD: arrays, METRICS_RECORD: metrics}), reply_to=message)
