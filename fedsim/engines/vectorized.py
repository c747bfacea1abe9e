"""The vectorized engine: a round's training cohort trains together, parameters stacked along a client dimension.

`VectorizedGrid` is the in-process Grid with one change: it is a client of the ClientApp's own description of a
round. For each TRAIN message it asks the ClientApp's `fedsim.client_plan.plan`; a round that is plain local
training the cohort kernel supports (`fedsim.engines.cohort.supports`, a model vmap can batch) is trained with the
others by `train_cohort` (in chunks of `engine.max_cohort` clients) and answered with the ClientApp's `reply`,
compressed as the ClientApp compresses it (`fedsim.compression.message.compress_reply`).
Everything else goes to the ClientApp one message at a time, exactly as on the in-process engine: queries,
evaluation, and train rounds the plan says need the full ClientApp (a client request asked, a fault drawn, a node
told to misbehave) or that the kernel does not declare (local debiasing's sample weights, an objective term it does
not compute). So a new client behaviour turns batching off instead of making the engines differ. The engine reads
no strategy: what a strategy asks of clients reaches it only through the plan. A model vmap cannot batch
(BatchNorm, Dropout) trains client by client, with a one-line notice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from numbers import Integral
from typing import Any
from uuid import uuid4

import torch
from flwr.app import ArrayRecord, Context, Error, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import ServerApp
from flwr.supercore.task_identity import TaskIdentity

from ..build import build_model
from ..client_plan import LocalTraining, NeedsClientApp, plan, reply
from ..compression.message import compress_reply
from ..data.federation import federation_for
from ..protocol.constraints import Interval, Options
from ..protocol.experiment import experiment_from_record
from ..protocol.keys import CONFIG_KEY, CONFIG_RECORD
from ..training import resolve_device
from .base import Engine
from .cohort import supports, train_cohort, unbatchable_reason
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

    def __init__(self, client_app: ClientApp, num_nodes: int, max_cohort: int | str = AUTO, run_id: int = RUN_ID,
                 node_config_extras: Mapping[int, Mapping[str, Any]] | None = None) -> None:
        super().__init__(client_app, num_nodes, run_id, node_config_extras=node_config_extras)
        self.max_cohort = max_cohort
        self._model_reasons: dict[str, str | None] = {}  # model config -> why it cannot batch (None: it can)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        deadline = None if timeout is None else time.monotonic() + timeout
        messages = list(messages)
        for message in messages:  # ids first, as the in-process Grid gives them: a cohort's replies answer them
            message.metadata.__dict__["_message_id"] = uuid4().hex
        groups: dict[str, dict[int, LocalTraining]] = {}  # experiment -> message index -> its plan
        for i, message in enumerate(messages):
            training = self._batchable_plan(message)
            if training is not None:
                groups.setdefault(str(message.content[CONFIG_RECORD][CONFIG_KEY]), {})[i] = training
        replies: dict[int, Message] = {}
        for group in groups.values():
            batch = [messages[i] for i in group]
            if self._model_batches(experiment_from_record(batch[0].content[CONFIG_RECORD])):
                replies.update(zip(group, self._train_together(batch, list(group.values()), deadline), strict=True))
        rest = [i for i in range(len(messages)) if i not in replies]
        if rest:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            replies.update(zip(rest, super().send_and_receive([messages[i] for i in rest], timeout=remaining),
                               strict=True))
        return [replies[i] for i in range(len(messages))]

    def _batchable_plan(self, message: Message) -> LocalTraining | None:
        """The ClientApp's plan of a TRAIN message when it is plain local training the cohort kernel supports."""
        context = self._contexts.get(message.metadata.dst_node_id)
        if message.metadata.message_type != MessageType.TRAIN or context is None:
            return None
        planned = plan(message, context)
        reason = planned.reason if isinstance(planned, NeedsClientApp) else supports(planned)
        if reason is not None:
            logger.debug("engine=vectorized: node %s trains in the ClientApp: %s", context.node_id, reason)
            return None
        return planned

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

    def _train_together(self, messages: list[Message], plans: Sequence[LocalTraining], deadline: float | None
                        ) -> list[Message]:
        """Replies to one experiment's batchable messages, trained chunk by chunk."""
        experiment = experiment_from_record(messages[0].content[CONFIG_RECORD])
        federation = federation_for(experiment)
        device = resolve_device(experiment["device"])
        model = build_model(experiment, federation.data)
        size = chunk_size(self.max_cohort, model, tuple(federation.data.train_arrays.x.shape[1:]),
                          max(len(p.data) for p in plans), plans[0].settings.batch_size, device)
        replies: list[Message] = []
        for start in range(0, len(plans), size):
            replies += self._train_chunk(model, messages[start : start + size], plans[start : start + size], device,
                                         deadline)
        return replies

    def _train_chunk(self, model: torch.nn.Module, messages: list[Message], plans: Sequence[LocalTraining],
                     device: torch.device, deadline: float | None) -> list[Message]:
        """The ClientApp's replies to one chunk trained as a cohort, or an error reply each."""
        if deadline is not None and time.monotonic() >= deadline:
            reason = "the round timeout (server.round_timeout) passed before this node's cohort trained"
            return [Message(Error(ErrorCode.REPLY_MESSAGE_UNAVAILABLE, reason), reply_to=m) for m in messages]
        try:
            trained, results = train_cohort(model, plans, device)
        except Exception as error:  # pylint: disable=broad-exception-caught  (out-of-memory included)
            reason = f"cohort training failed: {type(error).__name__}: {error}"
            return [Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=m) for m in messages]
        replies = [compress_reply(message, reply(message, result, ArrayRecord(weights)),
                                  self._contexts[message.metadata.dst_node_id])
                   for message, weights, result in zip(messages, trained, results, strict=True)]
        for answer in replies:
            answer.metadata.__dict__["_message_id"] = uuid4().hex
        return replies


class VectorizedEngine(Engine):
    """In-process simulation whose training rounds run the cohort stacked (vmap) on one device."""

    name = "vectorized"
    _parameter_constraints = {"max_cohort": [Options({AUTO}), Interval(Integral, 1, None, closed="left")]}

    def __init__(self, max_cohort: int | str = AUTO) -> None:
        self.max_cohort = max_cohort

    def run(self, server_app: ServerApp, client_app: ClientApp, num_nodes: int) -> None:
        grid = VectorizedGrid(client_app, num_nodes, self.max_cohort)
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, RUN_ID, SUPERLINK_NODE_ID
        context = Context(run_id=RUN_ID, node_id=0, node_config={}, state=RecordDict(), run_config={})
        server_app(grid, context)
