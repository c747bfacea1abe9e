"""fedsim's ServerApp: build the strategy from the config, run `strategy.start`, evaluate centrally every round."""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from typing import Any

import hydra.utils
import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from .config import needs_server_data
from .data.federation import Federation, federation_for
from .fairness import GroupCounts, fairness_summary, model_group_counts
from .experiment import ROUND_KEY, build_model, experiment_record, strategy_arguments
from .progress import RoundProgress
from .checkpoint import capture, load_checkpoint, restore_random_states, restore_strategy, save_checkpoint
from .reply_checks import ReplyLimits
from .rounds import run_rounds
from .results import Recorder
from .server_grid import FedsimGrid
from .training import evaluate, resolve_device

NODE_DISCOVERY_TIMEOUT = 600.0


def build_strategy(experiment: Mapping[str, Any], federation: Federation | None = None, device: str = "cpu") -> Strategy:
    """Instantiate the `strategy` config group entry (any Flower message-based strategy).

    A strategy class with `requires_server_data = True` (FedLAW) also gets `model` (the architecture), `proxy_data`
    (the server's proxy set) and `device`.
    """
    extras: dict[str, Any] = {}
    if needs_server_data(experiment):
        if federation is None:
            raise ValueError("this strategy needs the federation's proxy set")
        proxy = federation.proxy
        extras = {"model": build_model(experiment, federation.data), "proxy_data": (proxy.x, proxy.y), "device": device}
    strategy = hydra.utils.instantiate(strategy_arguments(experiment["strategy"]), **extras)
    if not isinstance(strategy, Strategy):
        raise TypeError(f"strategy._target_ must build a flwr.serverapp.strategy.Strategy, got {type(strategy).__name__}")
    return strategy


def _round_report(strategy: Strategy, grid: FedsimGrid) -> tuple[dict[int, float], dict[str, float]]:
    """A strategy's per-client aggregation weights (by partition id) and named scalars of its last round."""
    weights = getattr(strategy, "client_weights", None) or {}
    scalars = getattr(strategy, "round_scalars", None) or {}
    return {grid.partition_of(node): float(w) for node, w in weights.items()}, {k: float(v) for k, v in scalars.items()}


def _to_cpu_arrays(model: torch.nn.Module) -> ArrayRecord:
    return ArrayRecord({name: tensor.detach().cpu() for name, tensor in model.state_dict().items()})


def _evaluate_every_client(grid: FedsimGrid, arrays: ArrayRecord, experiment: Mapping[str, Any], timeout: float,
                           recorder: Recorder) -> tuple[dict[int, float], dict[int, float], dict[int, GroupCounts]]:
    """The final global model on every client's validation split, excluded clients included: (accuracy, loss,
    fairness group counts) per partition id (group counts only for data with a sensitive attribute)."""
    config = experiment_record(experiment)
    config[ROUND_KEY] = int(experiment["num_rounds"])
    content = RecordDict({"arrays": arrays, "config": config})
    messages = [Message(content, dst_node_id=node, message_type=MessageType.EVALUATE) for node in grid.all_node_ids()]
    grid.send_and_receive(messages, timeout=timeout)
    log = grid.take_round_log()
    recorder.record_nodes(log.nodes, int(experiment["num_rounds"]))  # a node that appeared after the last round
    replies = sorted(log.evaluate.items())
    accuracy = {pid: metrics["eval_acc"] for pid, metrics in replies if "eval_acc" in metrics}
    loss = {pid: metrics["eval_loss"] for pid, metrics in replies if "eval_loss" in metrics}
    groups = {pid: counts for pid, metrics in replies if (counts := GroupCounts.from_metrics(metrics)) is not None}
    return accuracy, loss, groups


def run_server(grid: Grid, experiment: Mapping[str, Any], recorder: Recorder, show_progress: bool = True,
               resume: bool = False) -> dict[str, Any]:
    """One federated run on `grid`; returns the summary the recorder wrote. With `resume`, it continues from the
    run folder's checkpoint when there is one (`fedsim.checkpoint`)."""
    seed, num_rounds = int(experiment["seed"]), int(experiment["num_rounds"])
    timeout = float(experiment["server"]["round_timeout"])
    federation = federation_for(experiment)
    device = resolve_device(experiment["device"])

    torch.manual_seed(seed)
    model = build_model(experiment, federation.data).to(device)
    initial_arrays = _to_cpu_arrays(model)

    excluded = list(experiment.get("exclude_clients") or [])
    client_sizes = {pid: len(rows) for pid, rows in enumerate(federation.client_indices)}  # caps num-examples
    fedsim_grid = FedsimGrid(grid, excluded, ReplyLimits.from_experiment(experiment, client_sizes))
    try:
        fedsim_grid.discover(int(experiment["num_clients"]), timeout=NODE_DISCOVERY_TIMEOUT)
    except TimeoutError:
        recorder.record_nodes(fedsim_grid.take_round_log().nodes, 0)  # nodes.csv says who was there and who was refused
        raise
    strategy = build_strategy(experiment, federation, str(device))
    if hasattr(strategy, "min_available_nodes"):
        # Flower's samplers wait until this many nodes are visible. Discovery has already waited for every node
        # before round 1, so waiting again only matters once a node is gone (excluded, or a SuperNode that died
        # mid-run): then the rounds go on with the nodes that are left instead of waiting for it forever.
        strategy.min_available_nodes = 1
    test_data, batch_size = federation.data.test_arrays, int(experiment["server"]["eval_batch_size"])

    with RoundProgress(num_rounds, enabled=show_progress) as progress:

        def central_evaluation(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            model.load_state_dict(arrays.to_torch_state_dict())
            result = evaluate(model, test_data, device, batch_size)
            log = fedsim_grid.take_round_log()
            weights, scalars = _round_report(strategy, fedsim_grid) if server_round > 0 else ({}, {})
            if test_data.sensitive is not None:  # group fairness of the global model on the test split
                groups = model_group_counts(model, test_data, device, batch_size)
                scalars = {"test_spd": groups.spd(), "test_eod": groups.eod(), **scalars}
            recorder.record_round(
                server_round, result.accuracy, result.loss, log.train, log.evaluate, len(log.failures), weights, scalars,
                log.rejections, log.skipped, nodes=log.nodes,
            )
            progress.update(server_round, result.accuracy, result.loss)
            return MetricRecord({"accuracy": result.accuracy, "loss": result.loss})

        # Flower's strategies sample clients with the `random` module over the grid's (partition-ordered) nodes.
        random.seed(seed)
        arrays, first_round = initial_arrays, 1
        checkpoint = load_checkpoint(recorder.run_dir) if resume else None
        if checkpoint is not None:
            restore_strategy(strategy, checkpoint)  # the strategy built from the config, with the saved state
            arrays, first_round = checkpoint.arrays, checkpoint.server_round + 1
            recorder.restore(checkpoint.recorder_state)
            fedsim_grid.restore_node_states(checkpoint.node_states)
            restore_random_states(checkpoint)
            progress.update(checkpoint.server_round, recorder.rows[-1]["test_accuracy"], recorder.rows[-1]["test_loss"])
        every = int(experiment["server"].get("checkpoint_every", 1))

        checkpoints = {"on": every > 0}

        def save(server_round: int, round_arrays: ArrayRecord) -> None:
            if not checkpoints["on"] or (server_round % every and server_round != num_rounds):
                return
            try:
                save_checkpoint(recorder.run_dir, capture(server_round, round_arrays, strategy, recorder.state(),
                                                          fedsim_grid.node_states()))
            except TypeError as error:  # a strategy holding state that is not plain data (fedsim.checkpoint)
                checkpoints["on"] = False  # the run matters more than its checkpoints: go on without them
                logging.getLogger("fedsim").warning("checkpoints turned off: the strategy's state cannot be saved (%s)", error)

        final_arrays = run_rounds(
            strategy, fedsim_grid, arrays, first_round=first_round, num_rounds=num_rounds, timeout=timeout,
            train_config=experiment_record(experiment), evaluate_config=experiment_record(experiment),
            evaluate_fn=central_evaluation, after_round=save,
        )
    recorder.save_model(final_arrays.to_torch_state_dict(), federation.data.input_shape, federation.data.num_classes)
    client_accuracy, client_loss, client_groups = {}, {}, {}
    if float(experiment["client"]["val_fraction"]) > 0:
        client_accuracy, client_loss, client_groups = _evaluate_every_client(fedsim_grid, final_arrays, experiment, timeout, recorder)
    losses = list(client_loss.values())
    loss_stats = {"mean": float(np.mean(losses)), "std": float(np.std(losses)), "max": float(np.max(losses))} if losses else {}
    extra: dict[str, Any] = {"client_loss": loss_stats}
    if test_data.sensitive is not None:
        model.load_state_dict(final_arrays.to_torch_state_dict())
        extra["fairness"] = fairness_summary(model_group_counts(model, test_data, device, batch_size), client_groups)
    return recorder.finish(client_accuracy, extra)


def make_server_app(experiment: Mapping[str, Any], recorder: Recorder, show_progress: bool = True,
                    resume: bool = False) -> tuple[ServerApp, dict]:
    """A ServerApp bound to one experiment; the returned dict receives the run's summary under "summary"."""
    app = ServerApp()
    outcome: dict[str, Any] = {}

    @app.main()
    def main(grid: Grid, context: Context) -> None:  # pylint: disable=unused-argument
        outcome["summary"] = run_server(grid, experiment, recorder, show_progress, resume)

    return app, outcome


# The ServerApp that Flower's Deployment Runtime loads (`serverapp = "fedsim.server:app"` in pyproject.toml): the
# experiment comes from the run config's `overrides` (see `fedsim.deploy.server_app`).
app = ServerApp()


@app.main()
def deployed_main(grid: Grid, context: Context) -> None:
    from .deploy.server_app import run_deployed

    run_deployed(grid, context)
