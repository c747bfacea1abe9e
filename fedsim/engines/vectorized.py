"""The vectorized engine: a round's training cohort trains together, parameters stacked along a client dimension.

`VectorizedGrid` is the in-process Grid with one change: in `send_and_receive`, the TRAIN messages it can batch are
trained at once by `fedsim.engines.cohort.train_cohort` (in chunks of `engine.max_cohort` clients) and answered with
the same reply the ClientApp would send (arrays, num-examples, train_loss, train_accuracy). Everything else goes to
the ClientApp one message at a time, exactly as on the in-process engine: queries, evaluation, and train messages
that ask for a client request (`fedsim.client_requests`), use local debiasing or draw a fault this round. A model
vmap cannot batch (BatchNorm, Dropout) trains client by client, with a one-line notice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any
from uuid import uuid4

import torch
from flwr.app import ArrayRecord, Context, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import ServerApp
from flwr.supercore.task_identity import TaskIdentity

from ..client import PARTITION_ID
from ..client_requests import AFTER_TRAINING, BEFORE_TRAINING, asked
from ..data.federation import federation_for
from ..data.noise import client_data
from ..experiment import CONFIG_KEY, ROUND_KEY, build_model, experiment_from_record, train_settings
from ..faults import Faults, draw_faults
from ..training import client_seed, resolve_device
from .base import Engine
from .cohort import CohortMember, train_cohort, unbatchable_reason
from .inprocess import RUN_ID, InProcessGrid

logger = logging.getLogger(__name__)

AUTO = "auto"
CPU_COHORT = 64  # clients per chunk on CPU when engine.max_cohort is auto
MEMORY_SHARE = 0.5  # share of the free GPU memory a chunk may plan to use


def chunk_size(max_cohort: int | str, model: torch.nn.Module, sample_shape: tuple[int, ...], longest: int,
               batch_size: int, device: torch.device) -> int:
    """Clients per chunk: `max_cohort`, or on CUDA what fits in half the free memory (a rough per-client estimate:
    weights, gradients, momentum, anchor and update temporaries, the client's data and one minibatch's activations)."""
    if max_cohort != AUTO:
        return max(int(max_cohort), 1)
    if device.type != "cuda":
        return CPU_COHORT
    free, _ = torch.cuda.mem_get_info(device)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    sample_bytes = 4 * int(torch.tensor(sample_shape).prod()) if sample_shape else 4
    activations = _activation_bytes(model, sample_shape, device)
    per_client = 8 * param_bytes + longest * sample_bytes + 3 * batch_size * activations
    return max(int(MEMORY_SHARE * free // max(per_client, 1)), 1)


def _activation_bytes(model: torch.nn.Module, sample_shape: tuple[int, ...], device: torch.device) -> int:
    """Bytes of every module output for one sample (a forward pass on a zero input, hooks summing the outputs)."""
    total = [0]

    def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            total[0] += output.numel() * output.element_size()

    handles = [module.register_forward_hook(hook) for module in model.modules()]
    try:
        with torch.no_grad():
            model.to(device)(torch.zeros((1, *sample_shape), device=device))
    finally:
        for handle in handles:
            handle.remove()
    return total[0]


class VectorizedGrid(InProcessGrid):
    """An in-process Grid that trains each round's batchable TRAIN messages as one stacked cohort."""

    def __init__(self, client_app: ClientApp, num_nodes: int, max_cohort: int | str = AUTO, run_id: int = RUN_ID) -> None:
        super().__init__(client_app, num_nodes, run_id)
        self.max_cohort = max_cohort
        self._model_reasons: dict[str, str | None] = {}  # model config -> why it cannot batch (None: it can)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        deadline = None if timeout is None else time.monotonic() + timeout
        messages = list(messages)
        batchable = [i for i, message in enumerate(messages) if self._batchable(message)]
        if not batchable:
            return super().send_and_receive(messages, timeout=timeout)
        replies: dict[int, Message] = {}
        groups: dict[str, list[int]] = {}
        for i in batchable:
            groups.setdefault(str(messages[i].content["config"][CONFIG_KEY]), []).append(i)
        for group in groups.values():
            for i, reply in zip(group, self._train_together([messages[i] for i in group], deadline), strict=True):
                replies[i] = reply
        rest = [i for i in range(len(messages)) if i not in replies]
        if rest:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            for i, reply in zip(rest, super().send_and_receive([messages[i] for i in rest], timeout=remaining),
                                strict=True):
                replies[i] = reply
        return [replies[i] for i in range(len(messages))]

    def _batchable(self, message: Message) -> bool:
        """A TRAIN message whose reply is plain local training of a model vmap can batch."""
        if message.metadata.message_type != MessageType.TRAIN or message.metadata.dst_node_id not in self._contexts:
            return False
        content = message.content
        if "config" not in content.config_records or "arrays" not in content.array_records:
            return False
        config = content["config"]
        if CONFIG_KEY not in config or ROUND_KEY not in config:
            return False
        if any(asked(config, key) for key in (*BEFORE_TRAINING, *AFTER_TRAINING)):
            return False
        experiment = experiment_from_record(config)
        if experiment["client"].get("local_debiasing", "none") != "none":
            return False
        partition_id = int(self._contexts[message.metadata.dst_node_id].node_config[PARTITION_ID])
        if draw_faults(experiment, int(config[ROUND_KEY]), partition_id) != Faults():
            return False
        return self._model_batches(experiment)

    def _model_batches(self, experiment: Mapping[str, Any]) -> bool:
        key = str(experiment["model"])
        if key in self._model_reasons:
            return self._model_reasons[key] is None
        with torch.random.fork_rng(devices=[]):  # a probe: leave the global random state as it was
            reason = unbatchable_reason(build_model(experiment, federation_for(experiment).data))
        self._model_reasons[key] = reason
        if reason is not None:
            target = str(experiment["model"].get("_target_", "?")).rsplit(".", 1)[-1]
            logger.warning("engine=vectorized: model %s trains client by client (%s)", target, reason)
        return reason is None

    def _train_together(self, messages: list[Message], deadline: float | None) -> list[Message]:
        config = messages[0].content["config"]
        experiment = experiment_from_record(config)
        federation = federation_for(experiment)
        device = resolve_device(experiment["device"])
        seed = int(experiment["seed"])
        members = []
        starts: dict[int, dict[str, torch.Tensor]] = {}  # strategies usually send one ArrayRecord to every node
        for message in messages:
            arrays = message.content["arrays"]
            if id(arrays) not in starts:
                starts[id(arrays)] = arrays.to_torch_state_dict()
            partition_id = int(self._contexts[message.metadata.dst_node_id].node_config[PARTITION_ID])
            train_data, _ = client_data(federation, experiment, partition_id)
            message_config = message.content["config"]
            members.append(CohortMember(
                data=train_data,
                settings=train_settings(experiment, message_config),
                seed=client_seed(seed, int(message_config[ROUND_KEY]), partition_id),
                start=starts[id(arrays)],
            ))
        model = build_model(experiment, federation.data)
        size = chunk_size(self.max_cohort, model, tuple(federation.data.train_arrays.x.shape[1:]),
                          max(len(m.data) for m in members), members[0].settings.batch_size, device)
        replies: list[Message] = []
        for start in range(0, len(members), size):
            chunk = members[start : start + size]
            if deadline is not None and time.monotonic() >= deadline:
                reason = "the round timeout (server.round_timeout) passed before this node's cohort trained"
                replies += [Message(Error(ErrorCode.REPLY_MESSAGE_UNAVAILABLE, reason), reply_to=message)
                            for message in messages[start : start + size]]
                continue
            try:
                trained, results = train_cohort(model, chunk, device)
            except Exception as error:  # pylint: disable=broad-exception-caught  (out-of-memory included)
                reason = f"cohort training failed: {type(error).__name__}: {error}"
                replies += [Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=message)
                            for message in messages[start : start + size]]
                continue
            for message, weights, result in zip(messages[start : start + size], trained, results, strict=True):
                metrics = MetricRecord({"num-examples": result.num_examples, "train_loss": result.loss,
                                        "train_accuracy": result.accuracy})
                reply = Message(RecordDict({"arrays": ArrayRecord(weights), "metrics": metrics}), reply_to=message)
                reply.metadata.__dict__["_message_id"] = uuid4().hex
                replies.append(reply)
        return replies


class VectorizedEngine(Engine):
    """In-process simulation whose training rounds run the cohort stacked (vmap) on one device."""

    name = "vectorized"

    def __init__(self, max_cohort: int | str = AUTO) -> None:
        self.max_cohort = max_cohort

    def run(self, server_app: ServerApp, client_app: ClientApp, num_nodes: int) -> None:
        grid = VectorizedGrid(client_app, num_nodes, self.max_cohort)
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, RUN_ID, SUPERLINK_NODE_ID
        context = Context(run_id=RUN_ID, node_id=0, node_config={}, state=RecordDict(), run_config={})
        server_app(grid, context)
