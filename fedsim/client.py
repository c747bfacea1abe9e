"""fedsim's ClientApp: answer who it is, train on its partition, evaluate the global model on its validation split.

The node learns its partition from Flower's node config (`partition-id`), as SuperNodes do in deployment.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from .data.federation import federation_for
from .data.noise import with_label_noise
from .strategies.fedce import COEF_KEY, MINUS_SCORE, client_minus_score, remember_local_model
from .strategies.feddisco import HISTOGRAM_RECORD, HISTOGRAM_REQUEST_KEY, histogram_reply
from .fairness import model_group_counts
from .experiment import PRETRAIN_EVAL_KEY, ROUND_KEY, build_model, experiment_from_record, train_settings
from .training import client_seed, evaluate, resolve_device, train_local

PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
IDENTITY_RECORD = "identity"

app = ClientApp()


def _partition_id(context: Context) -> int:
    if PARTITION_ID not in context.node_config:
        raise KeyError("this node has no 'partition-id' in its node config; start it with --node-config 'partition-id=N'")
    return int(context.node_config[PARTITION_ID])


@app.query()
def identify(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds, so it can order nodes the same way on every engine."""
    identity = ConfigRecord({PARTITION_ID: _partition_id(context)})
    return Message(RecordDict({IDENTITY_RECORD: identity}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local SGD from the received global model; replies with the new weights and `num-examples`."""
    config = msg.content["config"]
    experiment = experiment_from_record(config)
    partition_id = _partition_id(context)
    federation = federation_for(experiment)
    train_data, val_data = federation.client_split(partition_id)
    train_data = with_label_noise(train_data, experiment, partition_id, federation.data.num_classes)
    model = build_model(experiment, federation.data)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    device = resolve_device(experiment["device"])
    before = evaluate(model, train_data, device) if config.get(PRETRAIN_EVAL_KEY) else None
    minus_score = None
    if COEF_KEY in config:  # FedCE: score the global model without this client's last local model, before training
        probe = build_model(experiment, federation.data)

        def accuracy_of(arrays: ArrayRecord) -> float:
            probe.load_state_dict(arrays.to_torch_state_dict())
            return evaluate(probe, val_data if len(val_data) else train_data, device).accuracy

        minus_score = client_minus_score(context.state, msg.content["arrays"], float(config[COEF_KEY]), accuracy_of)
    # FairFed's local fairness F_k(w^t): group counts of the received model on the training data
    groups = None
    if before is not None and train_data.sensitive is not None:
        groups = model_group_counts(model, train_data, device)
    generator = torch.Generator().manual_seed(client_seed(int(experiment["seed"]), int(config[ROUND_KEY]), partition_id))
    result = train_local(model, train_data, train_settings(experiment, config), generator, device)
    metrics = MetricRecord(
        {"num-examples": result.num_examples, "train_loss": result.loss, "train_accuracy": result.accuracy}
    )
    if before is not None:  # the received model on the whole training set, before any local step
        metrics["pretrain_loss"], metrics["pretrain_accuracy"] = before.loss, before.accuracy
    if minus_score is not None:
        metrics[MINUS_SCORE] = minus_score
    if groups is not None:
        metrics.update(groups.to_metrics())
    arrays = ArrayRecord({name: tensor.detach().cpu() for name, tensor in model.state_dict().items()})
    if minus_score is not None:
        remember_local_model(context.state, arrays)
    content = RecordDict({"arrays": arrays, "metrics": metrics})
    if config.get(HISTOGRAM_REQUEST_KEY):  # FedDisco asks once for the training-label counts
        counts = torch.bincount(train_data.y, minlength=federation.data.num_classes)
        content[HISTOGRAM_RECORD] = histogram_reply(counts.tolist())
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate_global(msg: Message, context: Context) -> Message:
    """Accuracy and loss of the received global model on this client's local validation split.

    A client too small to hold out a validation row (one sample) evaluates on its training data instead. Data with
    a sensitive attribute adds the model's group counts (`fedsim.fairness`).
    """
    experiment = experiment_from_record(msg.content["config"])
    federation = federation_for(experiment)
    train_data, val_data = federation.client_split(_partition_id(context))
    if len(val_data) == 0:
        val_data = train_data
    model = build_model(experiment, federation.data)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    device = resolve_device(experiment["device"])
    result = evaluate(model, val_data, device)
    metrics = MetricRecord({"num-examples": result.num_examples, "eval_loss": result.loss, "eval_acc": result.accuracy})
    if val_data.sensitive is not None:
        metrics.update(model_group_counts(model, val_data, device).to_metrics())
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
