"""Malformed train replies, for robustness experiments on the server's reply checks (`fedsim.reply_checks`).

`MALFORMATIONS` are the ways a faulty client or a torn transfer can break a reply (unlike the attacks of
`fedsim.attacks`, which stay well-formed); `first_round` gives one strategy's real, unchecked replies to
break. The checks must reject every malformed reply before the strategy aggregates, and the global model must stay
finite and of the model's shapes.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message
from flwr.serverapp.strategy import Strategy

from ..build import build_model
from ..client import app as client_app
from ..config import compose_experiment, resolve_auto_values
from ..data.federation import federation_for
from ..engines.inprocess import InProcessGrid
from ..grid.fedsim_grid import FedsimGrid
from ..protocol.experiment import experiment_record
from ..protocol.keys import NUM_EXAMPLES, TRAIN_LOSS
from ..reply_checks import ReplyLimits
from ..server import build_strategy

MALFORMATIONS = ("none", "nan", "inf", "shape", "dtype", "drop_key", "extra_key", "no_arrays", "no_metrics",
                 "bad_count", "huge_count", "nan_metric", "huge_update", "no_count")
_METRIC_MALFORMATIONS = ("no_metrics", "bad_count", "huge_count", "nan_metric", "no_count")


def malformed(reply: Message, how: str) -> Message:
    """A copy of `reply` broken in way `how` (one of `MALFORMATIONS`; "none" leaves it intact). An array
    malformation hits the first floating-point array."""
    reply = copy.deepcopy(reply)
    content = reply.content
    if how == "none":
        return reply
    if how in _METRIC_MALFORMATIONS:
        metrics = next(iter(content.metric_records.values()))
        if how == "no_metrics":
            for name in list(content.metric_records):
                del content[name]
        elif how == "bad_count":
            metrics[NUM_EXAMPLES] = -1
        elif how == "huge_count":
            metrics[NUM_EXAMPLES] = 10**12
        elif how == "no_count":
            del metrics[NUM_EXAMPLES]
        else:
            metrics[TRAIN_LOSS] = float("nan")
        return reply
    record_name = next(iter(content.array_records))
    if how == "no_arrays":
        del content[record_name]
        return reply
    record = content.array_records[record_name]
    key = next(k for k, v in record.items() if v.numpy().dtype.kind == "f")
    values = record[key].numpy()
    if how == "nan":
        record[key] = Array(np.full_like(values, np.nan))
    elif how == "inf":
        record[key] = Array(np.full_like(values, np.inf))
    elif how == "shape":
        record[key] = Array(np.zeros(values.size + 1, dtype=values.dtype))
    elif how == "dtype":
        record[key] = Array(values.astype(np.float16))
    elif how == "drop_key":
        del record[key]
    elif how == "extra_key":
        record["injected"] = Array(np.zeros(2, dtype=np.float32))
    elif how == "huge_update":
        record[key] = Array(values + 1e4)
    return reply


class FirstRound(NamedTuple):
    """A strategy's first training round, before the checks."""

    strategy: Strategy
    grid: FedsimGrid  # checks replies; around the in-process engine's Grid
    arrays: ArrayRecord  # the initial global model
    replies: list[Message]  # the clients' valid replies, unchecked
    sent: dict[str, Message]  # the train instructions by message id


def first_round(strategy_name: str, *overrides: str) -> FirstRound:
    """`strategy_name`'s first training round on 4 in-process clients of fedsim's ClientApp, with `overrides` (data
    the strategy can run on), an absolute update-norm bound of 1000 and seed 0 for the initial model."""
    experiment = resolve_auto_values(compose_experiment(
        ["num_clients=4", "num_rounds=1", f"strategy={strategy_name}", "progress=false", "server.max_update_norm=1000",
         *overrides]))
    federation = federation_for(experiment)
    strategy = build_strategy(experiment, federation, "cpu")
    sizes = {pid: len(rows) for pid, rows in enumerate(federation.client_indices)}
    inner = InProcessGrid(client_app, 4)
    grid = FedsimGrid(inner, limits=ReplyLimits.from_experiment(experiment, sizes))
    grid.discover(4, timeout=30)
    torch.manual_seed(0)
    arrays = ArrayRecord({k: v.detach() for k, v in build_model(experiment, federation.data).state_dict().items()})
    messages = list(strategy.configure_train(1, arrays, experiment_record(experiment), grid))
    replies = list(inner.send_and_receive(messages, timeout=60))  # unchecked: the caller breaks them first
    return FirstRound(strategy, grid, arrays, replies, {m.metadata.message_id: m for m in messages})
