"""fedsim's ServerApp: one federated run on whatever Grid the engine gives it, in four steps.

- set up: the model, the Grid fedsim puts around the engine's (`fedsim.grid`, which waits for every node first),
  the strategy built from the config, the run's checkpoints;
- resume: from the run folder's checkpoint, when asked and there is one (`fedsim.checkpoint`);
- the rounds: `fedsim.rounds.run_rounds` (Flower's `Strategy.start` loop, able to begin at any round), or for an
  asynchronous strategy `fedsim.async_rounds` (a row every `concurrency` client updates), with a central evaluation
  of the global model and one recorded row after each round; the virtual clock (`fedsim.clock`) times them;
- finish: the final model on every client's validation split, and the run's summary.
"""

from __future__ import annotations

import functools
import json
import random
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import hydra.utils
import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from .async_rounds import AsyncLoop
from .build import build_model, strategy_arguments, traits_of
from .checkpoint import Checkpoint, Checkpointer
from .clock import VirtualClock
from .compression.message import compressor_from
from .data.federation import Federation, federation_for
from .fairness import GroupCounts, fairness_summary, federation_disparity, model_group_counts, pooled
from .grid.fedsim_grid import FedsimGrid
from .progress import RoundProgress
from .protocol.asynchronous import TrainsAsynchronously
from .protocol.capabilities import PersonalisesModels, PreparesFederation, ReportsClients, ReportsRound
from .protocol.experiment import experiment_record
from .protocol.keys import ARRAYS_RECORD, CONFIG_RECORD, EVAL_ACCURACY, EVAL_LOSS, ROUND_KEY
from .recorder import Recorder, RoundRecord, write_atomic
from .reply_checks import ReplyLimits
from .rounds import run_rounds
from .training import evaluate, resolve_device

NODE_DISCOVERY_TIMEOUT = 600.0
PREPARATION_FILE = "preparation.json"


def build_strategy(experiment: Mapping[str, Any], federation: Federation | None = None,
                   device: str = "cpu", slow_partitions: Sequence[int] = ()) -> Strategy:
    """Instantiate the `strategy` config group entry (any Flower message-based strategy).

    A strategy class with `requires_server_data = True` (FedLAW) also gets `model` (the architecture), `proxy_data`
    (the server's proxy set) and `device`; one with `requires_model = True` (Unstale) `model`, `input_shape` and
    `device`; one with `requires_slow_partitions = True` gets `slow_partitions` (the device model's slow group).
    """
    extras: dict[str, Any] = {}
    traits = traits_of(experiment)
    if traits.requires_server_data:
        if federation is None:
            raise ValueError("this strategy needs the federation's proxy set")
        proxy = federation.proxy
        extras = {"model": build_model(experiment, federation.data), "proxy_data": (proxy.x, proxy.y), "device": device}
    elif traits.requires_model:
        if federation is None:
            raise ValueError("this strategy needs the federation's data set (its model's input)")
        extras = {"model": build_model(experiment, federation.data), "device": device,
                  "input_shape": [int(n) for n in federation.data.input_shape]}
    if traits.requires_slow_partitions:
        extras["slow_partitions"] = [int(p) for p in slow_partitions]
    strategy = hydra.utils.instantiate(strategy_arguments(experiment["strategy"]), **extras)
    if not isinstance(strategy, Strategy):
        raise TypeError("strategy._target_ must build a flwr.serverapp.strategy.Strategy, "
                        f"got {type(strategy).__name__}")
    return strategy


def run_server(grid: Grid, experiment: Mapping[str, Any], recorder: Recorder, show_progress: bool = True,
               resume: bool = False, arrival_order: str = "virtual") -> dict[str, Any]:
    """One federated run on `grid`; returns the summary the recorder wrote. With `resume`, it continues from the
    run folder's checkpoint when there is one. `arrival_order`: the order in which an asynchronous run applies its
    replies, "virtual" (the virtual clock's, in simulation) or "real" (as they arrive, in deployment)."""
    run = ServerRun.set_up(grid, experiment, recorder)
    run.arrival_order = arrival_order
    with RoundProgress(run.num_rounds, enabled=show_progress) as progress:
        arrays, first_round = run.start(resume, progress)
        final_arrays = run.rounds(arrays, first_round, progress)
    return run.finish(final_arrays)


@dataclass
class ServerRun:  # pylint: disable=too-many-instance-attributes
    """What the steps of one run share."""

    experiment: Mapping[str, Any]
    recorder: Recorder
    federation: Federation
    device: torch.device
    model: torch.nn.Module
    initial_arrays: ArrayRecord
    grid: FedsimGrid
    strategy: Strategy
    checkpointer: Checkpointer
    clock: VirtualClock
    arrival_order: str = "virtual"
    loop: AsyncLoop | None = None  # an asynchronous strategy's loop

    @classmethod
    def set_up(cls, grid: Grid, experiment: Mapping[str, Any], recorder: Recorder) -> ServerRun:
        """Build the initial model (seeded), the clock, wait for every node, build the strategy."""
        federation = federation_for(experiment)
        device = resolve_device(experiment["device"])
        torch.manual_seed(int(experiment["seed"]))
        model = build_model(experiment, federation.data).to(device)
        initial_arrays = ArrayRecord({name: tensor.detach().cpu() for name, tensor in model.state_dict().items()})
        tied = experiment["devices"].get("slow_class") is not None  # a slow group tied to data
        clock = VirtualClock.from_experiment(experiment, federation.label_counts() if tied else None)
        fedsim_grid = _discovered_grid(grid, experiment, federation, recorder)
        fedsim_grid.clock = clock
        fedsim_grid.compressor = compressor_from(experiment)
        strategy = _strategy_for(experiment, federation, device, clock.devices.slow_partitions)
        every = int(experiment["server"].get("checkpoint_every", 1))
        checkpointer = Checkpointer(recorder, strategy, fedsim_grid.inner, every, int(experiment["num_rounds"]))
        return cls(experiment, recorder, federation, device, model, initial_arrays, fedsim_grid, strategy, checkpointer,
                   clock)

    @property
    def num_rounds(self) -> int:
        return int(self.experiment["num_rounds"])

    @property
    def timeout(self) -> float:
        return float(self.experiment["server"]["round_timeout"])

    def start(self, resume: bool, progress: RoundProgress) -> tuple[ArrayRecord, int]:
        """(global model, first round): the initial model and round 1, or where the checkpoint left off."""
        random.seed(int(self.experiment["seed"]))  # Flower's strategies sample the partition-ordered nodes with it
        checkpoint = self.checkpointer.resume() if resume else None
        if checkpoint is None:
            self._prepare(show=progress.enabled)
            return self.initial_arrays, 1
        last = self.recorder.rows[-1]
        self.clock.now = float(last.get("sim_time") or 0.0)
        self._resume_loop(checkpoint)
        progress.update(checkpoint.server_round, last["test_accuracy"], last["test_loss"])
        return checkpoint.arrays, checkpoint.server_round + 1

    def _resume_loop(self, checkpoint: Checkpoint) -> None:
        if isinstance(self.strategy, TrainsAsynchronously) and checkpoint.loop is not None:
            self._async_loop().restore(checkpoint.loop)

    def _prepare(self, show: bool) -> None:
        """The strategy's stage before round 1, if it has one (`PreparesFederation`); what it found goes to the run
        folder's `preparation.json`."""
        if not isinstance(self.strategy, PreparesFederation):
            return
        started = time.monotonic()
        name = type(self.strategy).__name__
        if show:
            print(f"{name}: preparing the federation before round 1 ...", file=sys.stderr, flush=True)
        found = self.strategy.prepare(self.grid, experiment_record(self.experiment), self.timeout)
        write_atomic(self.recorder.run_dir / PREPARATION_FILE, json.dumps(found, indent=1).encode())
        if show:
            print(f"{name}: prepared in {time.monotonic() - started:.1f} s ({PREPARATION_FILE})", file=sys.stderr,
                  flush=True)

    def rounds(self, arrays: ArrayRecord, first_round: int, progress: RoundProgress) -> ArrayRecord:
        """Rounds `first_round`..`num_rounds` (an asynchronous run's rows); returns the final global model."""
        if isinstance(self.strategy, TrainsAsynchronously):
            return self._async_rows(arrays, first_round, progress)
        return run_rounds(
            self.strategy, self.grid, arrays, first_round=first_round, num_rounds=self.num_rounds,
            timeout=self.timeout, train_config=experiment_record(self.experiment),
            evaluate_config=experiment_record(self.experiment),
            evaluate_fn=functools.partial(self._evaluate_round, progress=progress),
            after_round=self.checkpointer.after_round,
        )

    def _async_loop(self) -> AsyncLoop:
        if self.loop is None:
            assert isinstance(self.strategy, TrainsAsynchronously)
            rows = {pid: len(self.federation.client_rows(pid)[0]) for pid in range(self.federation.num_clients)}
            self.loop = AsyncLoop(self.strategy, self.grid, self.clock, train_config=experiment_record(self.experiment),
                                  train_rows=rows, seed=int(self.experiment["seed"]), timeout=self.timeout,
                                  order=self.arrival_order)
        return self.loop

    def _async_rows(self, arrays: ArrayRecord, first_row: int, progress: RoundProgress) -> ArrayRecord:
        """An asynchronous run: rows `first_row`..`num_rounds`, each after `concurrency` client updates, with the
        federated and central evaluation of a synchronous round."""
        loop = self._async_loop()
        if first_row == 1:
            self._evaluate_round(0, arrays, progress)

        def after_row(row: int, model: ArrayRecord) -> None:
            config = experiment_record(self.experiment)
            replies = self.grid.send_and_receive(self.strategy.configure_evaluate(row, model, config, self.grid),
                                                 timeout=self.timeout)
            self.strategy.aggregate_evaluate(row, replies)
            self._evaluate_round(row, model, progress)
            if isinstance(self.strategy, ReportsRound) and hasattr(self.strategy, "reset_report"):
                self.strategy.reset_report()
            self.checkpointer.after_round(row, model, loop.state())

        return loop.run(arrays, first_row=first_row, num_rows=self.num_rounds, after_update_row=after_row)

    def finish(self, arrays: ArrayRecord) -> dict[str, Any]:
        """Save the final model, evaluate it on every client and on the test split's groups; write the summary."""
        data = self.federation.data
        self.recorder.save_model(arrays.to_torch_state_dict(), data.input_shape, data.num_classes)
        if isinstance(self.strategy, PersonalisesModels):  # each client's own final model
            for node in self.grid.all_node_ids():
                self.recorder.save_model(self.strategy.model_for(node, arrays).to_torch_state_dict(), data.input_shape,
                                         data.num_classes, f"models/client_{self.grid.partition_of(node)}.pt")
        validated = float(self.experiment["client"]["val_fraction"]) > 0  # clients hold a validation split
        accuracy, loss, groups = self._evaluate_every_client(arrays) if validated else ({}, {}, {})
        extra: dict[str, Any] = {"client_loss": _loss_stats(list(loss.values())), **self._traffic_totals()}
        if data.test_arrays.sensitive is not None:
            self.model.load_state_dict(arrays.to_torch_state_dict())
            extra["fairness"] = fairness_summary(self._test_group_counts(), groups)
            if groups:
                extra["fairness"]["disparity"] = {**federation_disparity(groups), "accuracy": pooled(
                    list(groups.values())).accuracy}
        return self.recorder.finish(accuracy, extra)

    def _traffic_totals(self) -> dict[str, int]:
        """The whole run's bytes each way, the final evaluation on every client included (`fedsim.grid.traffic`)."""
        down, up = self.grid.take_traffic()
        down += self.recorder.total_bytes("down")
        up += self.recorder.total_bytes("up")
        return {"bytes_down": down, "bytes_up": up, "bytes_total": down + up}

    def _evaluate_round(self, server_round: int, arrays: ArrayRecord, progress: RoundProgress) -> MetricRecord:
        """Central evaluation of the global model after `server_round` (0: the initial model); records the row."""
        self.model.load_state_dict(arrays.to_torch_state_dict())
        result = evaluate(self.model, self.federation.data.test_arrays, self.device, self._batch_size)
        self.recorder.record_round(self._round_record(server_round, result.accuracy, result.loss))
        progress.update(server_round, result.accuracy, result.loss)
        return MetricRecord({"accuracy": result.accuracy, "loss": result.loss})

    def _round_record(self, server_round: int, accuracy: float, loss: float) -> RoundRecord:
        log = self.grid.take_round_log()
        weights, scalars = self._round_report() if server_round > 0 else ({}, {})
        if self.federation.data.test_arrays.sensitive is not None:  # global model's group fairness on the test split
            groups = self._test_group_counts()
            clients = {pid: counts for pid, metrics in log.evaluate.items()
                       if (counts := GroupCounts.from_metrics(metrics)) is not None}
            audit = {f"disparity_{name}": value for name, value in federation_disparity(clients).items()}
            scalars = {"test_spd": groups.spd(), "test_eod": groups.eod(), **audit, **scalars}
        if self.loop is not None and server_round > 0:
            scalars = {**self.loop.row_scalars(), **scalars}
        down, up = self.grid.take_traffic()
        return RoundRecord(server_round, accuracy, loss, train=log.train, evaluate=log.evaluate,
                           failures=len(log.failures), weights=weights, scalars=scalars, rejections=log.rejections,
                           skipped=log.skipped, nodes=log.nodes, sim_time=self.clock.now, bytes_down=down,
                           bytes_up=up)

    def _round_report(self) -> tuple[dict[int, float], dict[str, float]]:
        """The strategy's per-client aggregation weights (by partition id) and named scalars of its last round."""
        if not isinstance(self.strategy, ReportsRound):
            return {}, {}
        weights = {self.grid.partition_of(node): float(w) for node, w in self.strategy.client_weights.items()}
        scalars = {name: float(value) for name, value in self.strategy.round_scalars.items()}
        if isinstance(self.strategy, ReportsClients):
            for name, values in self.strategy.client_scalars.items():
                by_partition = sorted((self.grid.partition_of(node), float(value)) for node, value in values.items())
                scalars.update({f"{name}_client_{pid}": value for pid, value in by_partition})
        return weights, scalars

    def _test_group_counts(self) -> GroupCounts:
        return model_group_counts(self.model, self.federation.data.test_arrays, self.device, self._batch_size)

    @property
    def _batch_size(self) -> int:
        return int(self.experiment["server"]["eval_batch_size"])

    def _evaluate_every_client(
            self, arrays: ArrayRecord) -> tuple[dict[int, float], dict[int, float], dict[int, GroupCounts]]:
        """The final global model on every client's validation split, excluded clients included: (accuracy, loss,
        fairness group counts) per partition id (group counts only for data with a sensitive attribute)."""
        config = experiment_record(self.experiment)
        config[ROUND_KEY] = self.num_rounds
        personal = isinstance(self.strategy, PersonalisesModels)
        messages = [Message(RecordDict({ARRAYS_RECORD: self.strategy.model_for(node, arrays) if personal else arrays,
                                        CONFIG_RECORD: config}), dst_node_id=node, message_type=MessageType.EVALUATE)
                    for node in self.grid.all_node_ids()]
        self.grid.send_and_receive(messages, timeout=self.timeout)
        log = self.grid.take_round_log()
        self.recorder.record_nodes(log.nodes, self.num_rounds)  # a node that appeared after the last round
        replies = sorted(log.evaluate.items())
        accuracy = {pid: metrics[EVAL_ACCURACY] for pid, metrics in replies if EVAL_ACCURACY in metrics}
        loss = {pid: metrics[EVAL_LOSS] for pid, metrics in replies if EVAL_LOSS in metrics}
        groups = {pid: counts for pid, metrics in replies if (counts := GroupCounts.from_metrics(metrics)) is not None}
        return accuracy, loss, groups


def _discovered_grid(grid: Grid, experiment: Mapping[str, Any], federation: Federation,
                     recorder: Recorder) -> FedsimGrid:
    """The engine's Grid behind fedsim's, once every partition has its node; nodes.csv says who was there and who
    was refused even when discovery gives up."""
    client_sizes = {pid: len(rows) for pid, rows in enumerate(federation.client_indices)}  # caps num-examples
    limits = ReplyLimits.from_experiment(experiment, client_sizes)
    fedsim_grid = FedsimGrid(grid, list(experiment.get("exclude_clients") or []), limits)
    try:
        fedsim_grid.discover(int(experiment["num_clients"]), timeout=NODE_DISCOVERY_TIMEOUT)
    except TimeoutError:
        recorder.record_nodes(fedsim_grid.take_round_log().nodes, 0)
        raise
    return fedsim_grid


def _strategy_for(experiment: Mapping[str, Any], federation: Federation, device: torch.device,
                  slow_partitions: Sequence[int] = ()) -> Strategy:
    strategy = build_strategy(experiment, federation, str(device), slow_partitions)
    if hasattr(strategy, "min_available_nodes"):
        # Flower's samplers wait until this many nodes are visible. Discovery has already waited for every node
        # before round 1, so waiting again only matters once a node is gone (excluded, or a SuperNode that died
        # mid-run): then the rounds go on with the nodes that are left instead of waiting for it forever.
        strategy.min_available_nodes = 1
    return strategy


def _loss_stats(losses: list[float]) -> dict[str, float]:
    if not losses:
        return {}
    return {"mean": float(np.mean(losses)), "std": float(np.std(losses)), "max": float(np.max(losses))}


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
