"""fedsim's ClientApp: answer who it is, train on its partition, evaluate the global model on its validation split.

The node learns its partition from Flower's node config (`partition-id`), as SuperNodes do in deployment; there it
may also name its own data (`data-path`) and device (`device`): see `fedsim.node_config`. What a strategy asks of
a client beyond training (`fedsim.protocol.requests`) is declared by the strategy class the experiment names; the
ClientApp answers those requests and no others.

A train round starts from its plan (`fedsim.client_plan`): plain local training is trained as planned and answered
with the plan's `reply`, which is all an engine that batches clients does for it too; a round the plan says needs
the full ClientApp (client requests, injected faults, a node told to misbehave) runs here alone. Behaviour added to
a train round belongs in the full round, behind a reason in the plan, so that no engine can skip it. Either reply
leaves through the experiment's compressor (`fedsim.compression.message.compress_reply`), as a batched one does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from .attacks import Attack, attacked_update
from .build import build_model, traits_of
from .client_plan import (
    LocalTraining,
    NeedsClientApp,
    asked_requests,
    changed,
    client_attack,
    client_rows,
    local_training,
    plan,
    reply,
)
from .compression.message import compress_reply
from .data.client_data import client_data
from .data.tensors import ArrayDataset
from .errors import FedsimError
from .fairness import model_group_counts
from .faults import before_training, draw_faults, poisoned
from .node_config import load_global_model, node_device, node_federation, one_line_errors
from .node_config import partition_id as _partition_id
from .protocol.experiment import experiment_from_record
from .protocol.keys import (
    ARRAYS_RECORD,
    CONFIG_RECORD,
    EVAL_ACCURACY,
    EVAL_LOSS,
    IDENTITY_RECORD,
    METRICS_RECORD,
    NUM_EXAMPLES,
    PARTITION_ID,
    ROUND_KEY,
)
from .protocol.stages import STAGE_ACTION, STAGE_KEY
from .training import TrainResult, evaluate, train_local

if TYPE_CHECKING:
    from torch import nn

    from .data.federation import Federation

__all__ = ["app"]

app = ClientApp()


@app.query()
@one_line_errors
def identify(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds, so it can order nodes the same way on every engine."""
    identity = ConfigRecord({PARTITION_ID: _partition_id(context)})
    return Message(RecordDict({IDENTITY_RECORD: identity}), reply_to=msg)


@dataclass
class ClientRound:
    """One train round on one client: what the strategy's request functions see (`fedsim.protocol.LocalRound`), and
    one stage message's client (`fedsim.protocol.stages.StageRound`)."""

    config: ConfigRecord
    state: RecordDict
    received: ArrayRecord
    experiment: dict[str, Any]
    federation: Federation
    model: nn.Module | None  # holds the received model until training starts (None in a strategy's stage)
    train_data: ArrayDataset
    val_data: ArrayDataset
    device: torch.device
    partition_id: int

    def evaluate(self, arrays: ArrayRecord | None = None, split: str = "train", group_counts: bool = False
                 ) -> dict[str, float]:
        model = self.model
        if arrays is not None:
            model = build_model(self.experiment, self.federation.data)
            model.load_state_dict(arrays.to_torch_state_dict())
        data = self.train_data if split == "train" or not len(self.val_data) else self.val_data
        result = evaluate(model, data, self.device)
        metrics = {"loss": result.loss, "accuracy": result.accuracy}
        if group_counts and data.sensitive is not None:
            metrics.update(model_group_counts(model, data, self.device).to_metrics())
        return metrics

    def label_counts(self) -> list[int]:
        return torch.bincount(self.train_data.y, minlength=self.num_classes).tolist()

    @property
    def num_classes(self) -> int:
        return self.federation.data.num_classes

    def rows(self, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        data = self.train_data if split == "train" else self.val_data
        return data.x, data.y

    def sensitive(self, split: str = "train") -> torch.Tensor | None:
        return (self.train_data if split == "train" else self.val_data).sensitive

    def model_from(self, arrays: ArrayRecord) -> nn.Module:
        model = build_model(self.experiment, self.federation.data)
        load_global_model(model, arrays.to_torch_state_dict(), self.federation)
        return model

    def trained(self, arrays: ArrayRecord) -> ArrayRecord:
        model = self.model_from(arrays)
        message = Message(RecordDict({ARRAYS_RECORD: arrays, CONFIG_RECORD: self.config}), dst_node_id=0,
                          message_type=MessageType.TRAIN)
        _train(model, local_training(message, self.experiment, self.partition_id, self.train_data), self.device)
        return _arrays(model)


@app.train()
@one_line_errors
def train(msg: Message, context: Context) -> Message:
    """Local SGD from the received global model; replies with the new weights, `num-examples`, the training loss and
    accuracy, and the answers to what the strategy asked for in the config (its `client_requests`)."""
    planned = plan(msg, context)
    if isinstance(planned, NeedsClientApp):
        return compress_reply(msg, _full_round(msg, context), context)
    experiment = experiment_from_record(msg.content[CONFIG_RECORD])
    model = _received_model(msg, experiment, node_federation(experiment, context))
    result = _train(model, planned, node_device(context, experiment))
    return compress_reply(msg, reply(msg, result, _arrays(model)), context)


def _full_round(msg: Message, context: Context) -> Message:
    """A train round beyond plain local training: the strategy's client requests around it (and their changes to
    it: sample weights, batch terms), an injected fault, a Byzantine client's attack (`fedsim.attacks`)."""
    config = msg.content[CONFIG_RECORD]
    experiment = experiment_from_record(config)
    partition_id = _partition_id(context)
    attack = client_attack(experiment, context)  # read before training, so that a bad value costs no training
    local = _client_round(msg, context, experiment, partition_id, attack)
    requests = asked_requests(experiment, config)
    answers: dict[str, float] = {}
    for request in requests:
        if request.before is not None:
            answers.update(request.before(local))
    faults = draw_faults(experiment, int(config[ROUND_KEY]), partition_id)
    before_training(faults)
    training = local_training(msg, experiment, partition_id, local.train_data)
    for request in requests:
        if request.training is not None:
            training = changed(training, request.training(local))
    result = _train(local.model, training, local.device)
    arrays = _arrays(local.model)
    if faults.nan:
        arrays = poisoned(arrays)
    if attack is not None and not attack.on_data:
        arrays = _attacked(attack, arrays, msg, experiment, local, training)
    response = reply(msg, result, arrays)
    response.content[METRICS_RECORD].update(answers)
    for request in requests:
        if request.after is not None:
            request.after(local, arrays, response.content)
    return response


def _attacked(attack: Attack, arrays: ArrayRecord, msg: Message, experiment: dict[str, Any], local: ClientRound,
              training: LocalTraining) -> ArrayRecord:
    """What the attacker sends in place of its trained `arrays`; ALIE and FoE first train `attack.estimates - 1`
    more honest models on other batch orders (the colluders' updates the attack is built from)."""
    estimates = [arrays]
    if attack.kind in ("alie", "foe"):
        for extra in range(1, attack.estimates):
            model = _received_model(msg, experiment, local.federation)
            _train(model, replace(training, seed=training.seed + extra), local.device)
            estimates.append(_arrays(model))
    return attacked_update(attack, arrays, msg.content[ARRAYS_RECORD], int(experiment["seed"]),
                           int(local.config[ROUND_KEY]), local.partition_id, estimates)


def _client_round(msg: Message, context: Context, experiment: dict[str, Any], partition_id: int,
                  attack: Attack | None = None) -> ClientRound:
    """The round as the strategy's request functions see it, holding the received model."""
    federation = node_federation(experiment, context)
    train_data, val_data = client_rows(federation, experiment, partition_id, attack)
    model = _received_model(msg, experiment, federation)
    return ClientRound(msg.content[CONFIG_RECORD], context.state, msg.content[ARRAYS_RECORD], experiment, federation,
                       model, train_data, val_data, node_device(context, experiment), partition_id)


def _received_model(msg: Message, experiment: dict[str, Any], federation: Federation) -> nn.Module:
    """The experiment's model holding the global weights the message carries."""
    model = build_model(experiment, federation.data)
    load_global_model(model, msg.content[ARRAYS_RECORD].to_torch_state_dict(), federation)
    return model


def _train(model: nn.Module, training: LocalTraining, device: torch.device) -> TrainResult:
    """`train_local` as the plan describes it, from the model's current weights."""
    generator = torch.Generator().manual_seed(training.seed)
    return train_local(model, training.data, training.settings, generator, device, training.sample_weights,
                       training.objectives, training.batch_terms)


def _arrays(model: nn.Module) -> ArrayRecord:
    return ArrayRecord({name: tensor.detach().cpu() for name, tensor in model.state_dict().items()})


@app.query(STAGE_ACTION)
@one_line_errors
def strategy_stage(msg: Message, context: Context) -> Message:
    """The client half of a strategy's stage before training (`fedsim.protocol.stages`): the function the configured
    strategy declares under the message's stage name, on this client's rows."""
    config = msg.content[CONFIG_RECORD]
    experiment = experiment_from_record(config)
    name = str(config[STAGE_KEY])
    stages = traits_of(experiment).client_stages
    if name not in stages:
        raise FedsimError(f"strategy {experiment['strategy']['_target_']} declares no client stage {name!r}")
    partition_id = _partition_id(context)
    federation = node_federation(experiment, context)
    train_data, val_data = client_rows(federation, experiment, partition_id, client_attack(experiment, context))
    received = msg.content.array_records.get(ARRAYS_RECORD, ArrayRecord())
    local = ClientRound(config, context.state, received, experiment, federation, None, train_data, val_data,
                        node_device(context, experiment), partition_id)
    return Message(stages[name](local), reply_to=msg)


@app.evaluate()
@one_line_errors
def evaluate_global(msg: Message, context: Context) -> Message:
    """Accuracy and loss of the received global model on this client's local validation split.

    A client too small to hold out a validation row (one sample) evaluates on its training data instead. Data with
    a sensitive attribute adds the model's group counts (`fedsim.fairness`).
    """
    experiment = experiment_from_record(msg.content[CONFIG_RECORD])
    federation = node_federation(experiment, context)
    train_data, val_data = client_data(federation, experiment, _partition_id(context))
    if len(val_data) == 0:
        val_data = train_data
    model = _received_model(msg, experiment, federation)
    device = node_device(context, experiment)
    result = evaluate(model, val_data, device)
    metrics = MetricRecord({NUM_EXAMPLES: result.num_examples, EVAL_LOSS: result.loss, EVAL_ACCURACY: result.accuracy})
    if val_data.sensitive is not None:
        metrics.update(model_group_counts(model, val_data, device).to_metrics())
    return Message(RecordDict({METRICS_RECORD: metrics}), reply_to=msg)
