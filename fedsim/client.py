"""fedsim's ClientApp: answer who it is, train on its partition, evaluate the global model on its validation split.

The node learns its partition from Flower's node config (`partition-id`), as SuperNodes do in deployment; there it
may also name its own data (`data-path`) and device (`device`): see `fedsim.deploy.node`.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from .client_requests import AFTER_TRAINING, BEFORE_TRAINING, LocalRound, asked
from .data.noise import client_data
from .data.tensors import ArrayDataset
from .experiment import ROUND_KEY, build_model, experiment_from_record, train_settings
from .fairness import model_group_counts, reweighing_weights
from .deploy.node import NUM_PARTITIONS, PARTITION_ID, load_global_model, misbehavior, node_device, node_federation, one_line_errors
from .deploy.node import partition_id as _partition_id
from .faults import before_training, draw_faults, misbehaved, poisoned
from .training import client_seed, evaluate, train_local

__all__ = ["IDENTITY_RECORD", "NUM_PARTITIONS", "PARTITION_ID", "app"]

IDENTITY_RECORD = "identity"

app = ClientApp()


@app.query()
@one_line_errors
def identify(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds, so it can order nodes the same way on every engine."""
    identity = ConfigRecord({PARTITION_ID: _partition_id(context)})
    return Message(RecordDict({IDENTITY_RECORD: identity}), reply_to=msg)


@app.train()
@one_line_errors
def train(msg: Message, context: Context) -> Message:
    """Local SGD from the received global model; replies with the new weights, `num-examples`, the training loss and
    accuracy, and whatever the strategy asked for in the config (see `fedsim.client_requests`)."""
    config = msg.content["config"]
    experiment = experiment_from_record(config)
    partition_id = _partition_id(context)
    told = misbehavior(context)  # read before training, so that a bad value costs no training
    federation = node_federation(experiment, context)
    train_data, val_data = client_data(federation, experiment, partition_id)
    model = build_model(experiment, federation.data)
    load_global_model(model, msg.content["arrays"].to_torch_state_dict(), federation)
    device = node_device(context, experiment)
    local = LocalRound(config, context, experiment, federation, msg.content["arrays"], model, train_data, val_data, device)
    answers: dict[str, float] = {}
    for key, answer in BEFORE_TRAINING.items():
        if asked(config, key):
            answers.update(answer(local))
    faults = draw_faults(experiment, int(config[ROUND_KEY]), partition_id)
    before_training(faults)
    generator = torch.Generator().manual_seed(client_seed(int(experiment["seed"]), int(config[ROUND_KEY]), partition_id))
    weights = _sample_weights(experiment, train_data)
    result = train_local(model, train_data, train_settings(experiment, config), generator, device, weights)
    metrics = MetricRecord(
        {"num-examples": result.num_examples, "train_loss": result.loss, "train_accuracy": result.accuracy, **answers}
    )
    arrays = ArrayRecord({name: tensor.detach().cpu() for name, tensor in model.state_dict().items()})
    if faults.nan:
        arrays = poisoned(arrays)
    if told is not None:  # a node told to misbehave in its own node config (experiments with a malicious node)
        arrays = misbehaved(arrays, msg.content["arrays"], *told)
    content = RecordDict({"arrays": arrays, "metrics": metrics})
    for key, answer_after in AFTER_TRAINING.items():
        if asked(config, key):
            answer_after(local, arrays, content)
    return Message(content, reply_to=msg)


def _sample_weights(experiment: dict, data: ArrayDataset) -> torch.Tensor | None:
    """Per-row loss weights of the configured local debiasing (`client.local_debiasing`), or None."""
    if experiment["client"].get("local_debiasing", "none") != "reweighing" or data.sensitive is None:
        return None
    return reweighing_weights(data.y, data.sensitive)


@app.evaluate()
@one_line_errors
def evaluate_global(msg: Message, context: Context) -> Message:
    """Accuracy and loss of the received global model on this client's local validation split.

    A client too small to hold out a validation row (one sample) evaluates on its training data instead. Data with
    a sensitive attribute adds the model's group counts (`fedsim.fairness`).
    """
    experiment = experiment_from_record(msg.content["config"])
    federation = node_federation(experiment, context)
    train_data, val_data = client_data(federation, experiment, _partition_id(context))
    if len(val_data) == 0:
        val_data = train_data
    model = build_model(experiment, federation.data)
    load_global_model(model, msg.content["arrays"].to_torch_state_dict(), federation)
    device = node_device(context, experiment)
    result = evaluate(model, val_data, device)
    metrics = MetricRecord({"num-examples": result.num_examples, "eval_loss": result.loss, "eval_acc": result.accuracy})
    if val_data.sensitive is not None:
        metrics.update(model_group_counts(model, val_data, device).to_metrics())
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
