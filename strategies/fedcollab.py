"""FedCollab (Bao, Wang, Wu, He; ICML 2023): choose who trains with whom, then run FedAvg inside each coalition.

Clients whose data differ too much hurt each other in one global model; clients too small to train alone gain from
joining others. FedCollab weighs the two: it estimates every pairwise distribution distance d_ij, picks the
partition of clients into coalitions that minimises a generalisation-plus-shift bound
(`fedsim.strategies.coalitions`), and runs FedAvg within each coalition, so that no client should end up worse
than training alone.

The stage before training (`prepare`, through the Grid; the reference's `disc.py`) estimates each d_ij as its
reference does: a binary domain discriminator h for the pair (i, j), trained by two-client FedAvg (each round client
i takes one SGD step on one minibatch with its rows labelled 0, client j with its rows labelled 1, and the server
averages the two), evaluated every `distance_eval_every` rounds on the clients' held-out estimator rows as
acc_i + acc_j, the best value kept; d_ij = best − 1 (2·balanced accuracy − 1). The pairs are batched: each stage
round every client gets the discriminators of all its active pairs in one message and steps them as one stacked
model, so a round costs K messages, not K(K−1). A pair stops after `distance_patience` evaluations without
improvement. The estimator trains on the same number of rows at every client, ⌊min_k n_k / 2⌋ (the reference's
rule), and validates on the rest of the client's training rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from itertools import combinations
from logging import INFO
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from fedsim.protocol.constraints import Interval, Options
from fedsim.protocol.keys import ARRAYS_RECORD, CONFIG_RECORD, METRICS_RECORD, NUM_EXAMPLES, ROUND_KEY
from fedsim.protocol.stages import STAGE_KEY, STAGE_MESSAGE_TYPE, StageRound

from .base import WeightedAggregation
from .coalitions import coalitions_of, solve_coalitions
from .common import single_array_record, single_metric, to_array_record, weighted_average

STAGE = "fedcollab-distances"
COALITIONS = ("solved", "alone", "together")
DIVERGENCES = ("C", "H")
PARAMETERS = ("w1", "b1", "v", "c", "w2", "b2")  # the stacked discriminators' arrays
POSITIVE_INT = [Interval(Integral, 1, None, closed="left")]
_SPLIT_SALT, _BATCH_SALT = 31337, 4099


class FedCollab(WeightedAggregation):
    """FedAvg inside coalitions chosen from pairwise distribution distances (see the module docstring).

    Parameters (beyond `WeightedAggregation`'s)
    ----------
    c : float >= 0
        C of the objective C·gen_i + shift_i: how much small coalitions' estimation error weighs against
        distribution shift; default 1, the reference solver's. gen_i scales as 1/sqrt(rows): the reference's
        examples use 10 (FMNIST, rotated CIFAR-10) and 8 (coarse CIFAR-100) on clients of thousands of rows.
    coalitions : "solved" | "alone" | "together"
        The solver's coalitions (FedCollab), every client alone (local training) or all together (FedAvg): the
        three columns of the paper's tables, from one strategy.
    distance_rounds, distance_eval_every, distance_patience, distance_lr, distance_batch_size : int, float
        The discriminators' two-client FedAvg: at most R rounds (reference 2000), an evaluation every 10 rounds, a
        pair stops after 10 evaluations without improvement, SGD lr 0.01 (re-created each round: no momentum), one
        minibatch of 32 per round.
    divergence : "C" | "H"
        "C" (every reference example): the discriminator sees inputs and labels (covariate and label shift);
        "H": inputs only.
    hidden : int
        The discriminator MLP's width (200 in the reference): flatten(x)·W1 + 2·ν·onehot(y)·V → ReLU → 1.
    solver_restarts, solver_max_iter : int
        The local search's random restarts (100) and passes (100).
    """

    client_stages: ClassVar[dict[str, Any]] = {}  # filled below, once the client half is defined
    _parameter_constraints: ClassVar[dict[str, list]] = {
        "c": [Interval(Real, 0, None, closed="left")],
        "coalitions": [Options(COALITIONS)],
        "distance_rounds": POSITIVE_INT,
        "distance_eval_every": POSITIVE_INT,
        "distance_patience": POSITIVE_INT,
        "distance_lr": [Interval(Real, 0, None, closed="neither")],
        "distance_batch_size": POSITIVE_INT,
        "divergence": [Options(DIVERGENCES)],
        "hidden": POSITIVE_INT,
        "solver_restarts": POSITIVE_INT,
        "solver_max_iter": POSITIVE_INT,
    }

    def __init__(self, *, c: float = 1.0, coalitions: str = "solved", distance_rounds: int = 2000,
                 distance_eval_every: int = 10, distance_patience: int = 10, distance_lr: float = 0.01,
                 distance_batch_size: int = 32, divergence: str = "C", hidden: int = 200, solver_restarts: int = 100,
                 solver_max_iter: int = 100, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.c, self.coalitions = float(c), coalitions
        self.distance_rounds, self.distance_eval_every = distance_rounds, distance_eval_every
        self.distance_patience, self.distance_lr = distance_patience, float(distance_lr)
        self.distance_batch_size, self.divergence, self.hidden = distance_batch_size, divergence, hidden
        self.solver_restarts, self.solver_max_iter = solver_restarts, solver_max_iter
        self.coalition_of: dict[int, int] = {}  # node id -> coalition, set by `prepare`
        self.coalition_sizes: dict[int, int] = {}  # coalition -> training rows
        self.coalition_models: dict[int, ArrayRecord] = {}

    def summary(self) -> None:
        log(INFO, "\t├──> FedCollab: coalitions %s, C = %s, divergence %s", self.coalitions, self.c, self.divergence)
        super().summary()

    # --- the stage before training -------------------------------------------------------------------------------
    def prepare(self, grid: Grid, config: ConfigRecord, timeout: float) -> dict[str, Any]:
        """Estimate the distances (unless the coalitions are fixed), solve for the coalitions; returns what the run
        folder keeps: the distances, the sizes and the coalitions (by position in the node order)."""
        nodes = list(grid.get_node_ids())  # fedsim's Grid lists them in partition order
        replies = _ask(grid, {node: (RecordDict(), {"phase": "sizes"}) for node in nodes}, config, timeout)
        sizes = np.array([int(single_metric(replies[node].content, NUM_EXAMPLES)) for node in nodes])
        distances = np.zeros((len(nodes), len(nodes)))
        if self.coalitions == "solved":
            distances = self._estimate_distances(grid, nodes, sizes, config, timeout)
            choice = solve_coalitions(distances, sizes, self.c, self.solver_restarts, self.solver_max_iter, self.seed)
        elif self.coalitions == "alone":
            choice = np.arange(len(nodes))
        else:
            choice = np.zeros(len(nodes), dtype=int)
        self.coalition_of = {node: int(group) for node, group in zip(nodes, choice, strict=True)}
        self.coalition_sizes = {int(group): int(sizes[choice == group].sum()) for group in np.unique(choice)}
        log(INFO, "FedCollab coalitions: %s", coalitions_of(choice))
        return {"coalitions": coalitions_of(choice), "sizes": sizes.tolist(), "distances": distances.tolist(),
                "c": self.c}

    def _estimate_distances(self, grid: Grid, nodes: list[int], sizes: np.ndarray, config: ConfigRecord,
                            timeout: float) -> np.ndarray:
        """d_ij for every pair: best acc_i + acc_j − 1 of the pair's discriminator over its two-client FedAvg."""
        pairs = list(combinations(range(len(nodes)), 2))
        best = np.full(len(pairs), -np.inf)
        stale = np.zeros(len(pairs), dtype=int)
        models = _initial_discriminators(self._shape(grid, nodes[0], config, timeout), len(pairs), self.seed)
        estimator_rows = int(sizes.min()) // 2
        active = np.ones(len(pairs), dtype=bool)
        for stage_round in range(self.distance_rounds + 1):  # the message of round s carries the model after s steps
            # evaluated after steps 1, 1 + every, ... as the reference (after its round r = 0, 10, ...), and at the end
            evaluate = (stage_round >= 1 and (stage_round - 1) % self.distance_eval_every == 0
                        or stage_round == self.distance_rounds)
            step = stage_round < self.distance_rounds
            mine = {k: [p for p in np.flatnonzero(active) if k in pairs[p]] for k in range(len(nodes))}
            requests = {}
            for k, node in enumerate(nodes):
                chosen = mine[k]
                arrays = ArrayRecord({name: Array(models[name][chosen].numpy()) for name in PARAMETERS})
                requests[node] = (RecordDict({ARRAYS_RECORD: arrays}), {
                    "phase": "step" if step else "evaluate", "evaluate": evaluate, "sides": [
                        int(pairs[p][1] == k) for p in chosen], "estimator-rows": estimator_rows,
                    "lr": self.distance_lr, "batch-size": self.distance_batch_size, "stage-round": stage_round,
                    "hidden": self.hidden, "divergence": self.divergence, "seed": self.seed})
            replies = _ask(grid, requests, config, timeout)
            if evaluate:
                metric = np.zeros(len(pairs))
                for k, node in enumerate(nodes):
                    accuracy = replies[node].content[METRICS_RECORD]["accuracy"] if mine[k] else []
                    for p, value in zip(mine[k], accuracy, strict=True):
                        metric[p] += float(value)
                improved = active & (metric > best)
                best[improved] = metric[improved]
                stale[improved] = 0
                stale[active & ~improved] += 1
                active &= stale < self.distance_patience
            if step:
                models = _averaged(models, pairs, nodes, mine, replies)
            if not active.any():
                break
            if stage_round % 100 == 0:
                log(INFO, "FedCollab distances: round %d, %d of %d pairs still training", stage_round,
                    int(active.sum()), len(pairs))
        distances = np.zeros((len(nodes), len(nodes)))
        for p, (i, j) in enumerate(pairs):
            distances[i, j] = distances[j, i] = best[p] - 1.0
        return distances

    def _shape(self, grid: Grid, node: int, config: ConfigRecord, timeout: float) -> tuple[int, int, int]:
        """(input features, label classes, hidden) of the discriminators, asked of one client."""
        reply = _ask(grid, {node: (RecordDict(), {"phase": "shape"})}, config, timeout)[node]
        metrics = reply.content[METRICS_RECORD]
        classes = int(metrics["classes"]) if self.divergence == "C" else 0
        return int(metrics["features"]), classes, self.hidden

    # --- FedAvg inside each coalition ----------------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Each sampled node gets its coalition's model (all start from the initial global model)."""
        if not self.coalition_models:
            self.coalition_models = {group: arrays for group in set(self.coalition_of.values())}
        return [self._with_coalition_model(m) for m in super().configure_train(server_round, arrays, config, grid)]

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return [self._with_coalition_model(m) for m in super().configure_evaluate(server_round, arrays, config, grid)]

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """n_k-weighted FedAvg within each coalition; returns the largest coalition's model as the global one."""
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        by_group: dict[int, list[Message]] = {}
        for reply in valid:
            by_group.setdefault(self._group(reply.metadata.src_node_id), []).append(reply)
        for group, members in by_group.items():
            sizes = [single_metric(reply.content, self.weighted_by_key) for reply in members]
            weights = [size / sum(sizes) for size in sizes]
            contents = [reply.content for reply in members]
            self.coalition_models[group] = to_array_record(weighted_average(contents, weights),
                                                           single_array_record(contents[0]).keys())
            self.client_weights.update({reply.metadata.src_node_id: w for reply, w in zip(members, weights,
                                                                                         strict=True)})
        self.round_scalars["coalitions"] = float(len(self.coalition_sizes))
        return self._largest_model(), self.train_metrics_aggr_fn([reply.content for reply in valid],
                                                                 self.weighted_by_key)

    def model_for(self, node_id: int, global_arrays: ArrayRecord) -> ArrayRecord:
        return self.coalition_models.get(self._group(node_id), global_arrays)

    def _group(self, node_id: int) -> int:
        if node_id not in self.coalition_of:  # not prepared, or a node that joined later: a coalition of its own
            self.coalition_of[node_id] = max(self.coalition_of.values(), default=-1) + 1
        return self.coalition_of[node_id]

    def _largest_model(self) -> ArrayRecord:
        present = [group for group in self.coalition_models if group in self.coalition_sizes] or list(
            self.coalition_models)
        return self.coalition_models[max(present, key=lambda group: (self.coalition_sizes.get(group, 0), -group))]

    def _with_coalition_model(self, message: Message) -> Message:
        model = self.coalition_models.get(self._group(message.metadata.dst_node_id))
        if model is None:
            return message
        records = {name: record for name, record in message.content.items() if name != self.arrayrecord_key}
        return Message(RecordDict({**records, self.arrayrecord_key: model}), dst_node_id=message.metadata.dst_node_id,
                       message_type=message.metadata.message_type)


def _ask(grid: Grid, requests: Mapping[int, tuple[RecordDict, dict[str, Any]]], config: ConfigRecord,
         timeout: float) -> dict[int, Message]:
    """Send each node its stage message (the experiment's config plus `keys`); every node must answer."""
    messages = []
    for node, (content, keys) in requests.items():
        stage_config = ConfigRecord({**dict(config), STAGE_KEY: STAGE, ROUND_KEY: 0, **keys})
        messages.append(Message(RecordDict({**dict(content.items()), CONFIG_RECORD: stage_config}), dst_node_id=node,
                                message_type=STAGE_MESSAGE_TYPE))
    replies = {reply.metadata.src_node_id: reply for reply in grid.send_and_receive(messages, timeout=timeout)}
    for node in requests:
        if node not in replies or replies[node].has_error():
            reason = replies[node].error.reason if node in replies else "no reply"
            raise RuntimeError(f"FedCollab's distance stage needs every client; node {node} failed: {reason}")
    return replies


def _initial_discriminators(shape: tuple[int, int, int], count: int, seed: int) -> dict[str, torch.Tensor]:
    """`count` copies of one discriminator (the same start for every pair, as the reference), PyTorch's default
    Linear initialisation U(±1/sqrt(fan_in)) from a generator of its own."""
    features, classes, hidden = shape
    generator = torch.Generator().manual_seed(seed)

    def uniform(fan_in: int, *size: int) -> torch.Tensor:
        bound = 1.0 / math.sqrt(max(fan_in, 1))
        return (torch.rand(size, generator=generator, dtype=torch.float64) * 2 - 1) * bound

    labels = max(classes, 1)
    one = {"w1": uniform(features, hidden, features), "b1": uniform(features, hidden),
           "v": uniform(labels, hidden, labels), "c": uniform(labels, hidden), "w2": uniform(hidden, hidden),
           "b2": uniform(hidden, 1)[0]}
    return {name: value.to(torch.float32).unsqueeze(0).repeat(count, *([1] * value.dim())).contiguous()
            for name, value in one.items()}


def _averaged(models: dict[str, torch.Tensor], pairs: Sequence[tuple[int, int]], nodes: list[int],
              mine: Mapping[int, list[int]], replies: Mapping[int, Message]) -> dict[str, torch.Tensor]:
    """Each active pair's discriminator = the mean of its two clients' stepped copies."""
    stepped = {name: torch.zeros_like(value) for name, value in models.items()}
    counts = torch.zeros(len(pairs))
    for k, node in enumerate(nodes):
        if not mine[k]:
            continue
        arrays = replies[node].content[ARRAYS_RECORD]
        index = torch.as_tensor(mine[k], dtype=torch.long)
        for name in PARAMETERS:
            stepped[name][index] += torch.from_numpy(arrays[name].numpy())
        counts[index] += 1
    done = counts > 0
    for name in PARAMETERS:
        shape = (-1,) + (1,) * (models[name].dim() - 1)
        models[name][done] = stepped[name][done] / counts[done].view(shape)
    return models


# --- the client half ---------------------------------------------------------------------------------------------

def _logits(params: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, classes: int) -> torch.Tensor:
    """h(x, y) of P stacked discriminators on P batches: x (P, B, F), y (P, B) -> (P, B). With labels ("C"):
    ReLU(W1 x + b1 + 2 (ν V onehot(y) + c)), ν = L / sqrt(L - 1), the reference's scaling of the label branch."""
    hidden = torch.baddbmm(params["b1"].unsqueeze(1), x, params["w1"].transpose(1, 2))
    if classes > 0:
        nu = classes / math.sqrt(classes - 1) if classes > 1 else 1.0
        label = params["v"].transpose(1, 2)  # (P, classes, H): row y is V onehot(y)
        picked = torch.gather(label, 1, y.unsqueeze(-1).expand(-1, -1, label.shape[-1]))
        hidden = hidden + 2 * (nu * picked + params["c"].unsqueeze(1))
    return torch.einsum("pbh,ph->pb", torch.relu(hidden), params["w2"]) + params["b2"].unsqueeze(1)


def _estimator_split(local: StageRound, rows: int) -> tuple[tuple[torch.Tensor, torch.Tensor],
                                                             tuple[torch.Tensor, torch.Tensor]]:
    """The client's discriminator rows: `rows` of its training rows (seeded) to train on, the rest to validate."""
    x, y = local.rows("train")
    x = x.reshape(len(x), -1).to(torch.float32)
    seed = int(local.config["seed"])
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(
        int(np.random.SeedSequence([seed, local.partition_id, _SPLIT_SALT]).generate_state(1)[0])))
    train, valid = order[:rows], order[rows:]
    if len(valid) == 0:
        valid = train
    return (x[train], y[train]), (x[valid], y[valid])


def client_stage(local: StageRound) -> RecordDict:
    """The client half of FedCollab's distance stage: its size, its data's shape, or one step of (and the validation
    accuracy before it of) every discriminator it shares with another client."""
    config = local.config
    phase = str(config["phase"])
    if phase == "sizes":
        return RecordDict({METRICS_RECORD: MetricRecord({NUM_EXAMPLES: len(local.rows("train")[1])})})
    if phase == "shape":
        x, _ = local.rows("train")
        return RecordDict({METRICS_RECORD: MetricRecord({"features": int(np.prod(x.shape[1:])),
                                                    "classes": int(local.num_classes)})})
    received = local.received
    params = {name: torch.from_numpy(received[name].numpy().copy()) for name in PARAMETERS}
    count = params["w1"].shape[0]
    classes = int(local.num_classes) if str(config["divergence"]) == "C" else 0
    sides = torch.as_tensor(list(config["sides"]), dtype=torch.float32)
    (train_x, train_y), (valid_x, valid_y) = _estimator_split(local, int(config["estimator-rows"]))
    metrics: dict[str, Any] = {}
    if bool(config["evaluate"]) and count:
        with torch.no_grad():
            logits = _logits(params, valid_x.expand(count, -1, -1), valid_y.expand(count, -1), classes)
            metrics["accuracy"] = ((logits >= 0).float() == sides.unsqueeze(1)).float().mean(dim=1).tolist()
    if phase == "step" and count and len(train_x):
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence(
            [int(config["seed"]), local.partition_id, int(config["stage-round"]), _BATCH_SALT]).generate_state(1)[0]))
        batch = min(int(config["batch-size"]), len(train_x))
        rows = torch.argsort(torch.rand(count, len(train_x), generator=generator), dim=1)[:, :batch]
        for value in params.values():
            value.requires_grad_(True)
        logits = _logits(params, train_x[rows], train_y[rows], classes)
        target = sides.unsqueeze(1).expand_as(logits)
        # the sum over pairs of each pair's mean loss: every discriminator gets its own gradient
        loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=1).sum()
        grads = torch.autograd.grad(loss, [params[name] for name in PARAMETERS], allow_unused=True)
        with torch.no_grad():  # plain SGD, re-created every round in the reference: no momentum to carry
            params = {name: (params[name] if grad is None else params[name] - float(config["lr"]) * grad).detach()
                      for name, grad in zip(PARAMETERS, grads, strict=True)}
    content = RecordDict({METRICS_RECORD: MetricRecord(metrics)})
    if phase == "step":
        content[ARRAYS_RECORD] = ArrayRecord({name: Array(params[name].numpy()) for name in PARAMETERS})
    return content


FedCollab.client_stages = {STAGE: client_stage}
