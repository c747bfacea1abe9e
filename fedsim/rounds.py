"""The round loop of a fedsim run: Flower's `Strategy.start` loop, able to begin at any round.

Flower's `start` always begins at round 1, so a run resumed from a checkpoint could not continue where it stopped.
This loop makes the same calls in the same order (configure_train, send_and_receive, aggregate_train,
configure_evaluate, send_and_receive, aggregate_evaluate, central evaluation), so any Flower strategy runs here
exactly as under `start`, and adds a hook after each round for checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

EvaluateFn = Callable[[int, ArrayRecord], object]
RoundHook = Callable[[int, ArrayRecord], None]


def run_rounds(  # pylint: disable=too-many-arguments
    strategy: Strategy,
    grid: Grid,
    arrays: ArrayRecord,
    *,
    first_round: int,
    num_rounds: int,
    timeout: float,
    train_config: ConfigRecord,
    evaluate_config: ConfigRecord,
    evaluate_fn: EvaluateFn,
    after_round: RoundHook | None = None,
) -> ArrayRecord:
    """Rounds `first_round`..`num_rounds` from the global model `arrays`; returns the final global model.

    Round 0 (the central evaluation of the initial model) runs only when starting at round 1. A round whose
    aggregation returns nothing (no valid reply) keeps the global model, as in Flower.
    """
    if first_round == 1:
        evaluate_fn(0, arrays)
    for server_round in range(first_round, num_rounds + 1):
        train_replies = grid.send_and_receive(
            messages=strategy.configure_train(server_round, arrays, train_config, grid), timeout=timeout
        )
        aggregated, _ = strategy.aggregate_train(server_round, train_replies)
        if aggregated is not None:
            arrays = aggregated
        evaluate_replies = grid.send_and_receive(
            messages=strategy.configure_evaluate(server_round, arrays, evaluate_config, grid), timeout=timeout
        )
        strategy.aggregate_evaluate(server_round, evaluate_replies)
        evaluate_fn(server_round, arrays)
        if after_round is not None:
            after_round(server_round, arrays)
    return arrays
