"""The virtual clock's cost and the asynchronous loop's throughput on the in-process engine.

Two tables, medians over `--repeats` runs, each run in its own process:

1. clock: the clock's own work per round (timed alone, by number of clients), and seconds per round of the main
   job's workload (FedAvg on digits, 10 clients) and of 100 clients of a small
   model, with fedsim's clock as every run has it and with the clock switched off (the synchronous training exchange
   bypasses `fedsim.clock.clocked_round`); the clock's share of a round's wall time.
2. throughput: client updates per second with `--clients` clients (default 1,000): synchronous FedAvg rounds that
   sample `--concurrency` clients (default 100) against FedAsync and FedBuff keeping that many clients in flight;
   the same rows (one per `concurrency` updates), the same central evaluation, no federated evaluation. FedAsync's
   clients add its proximal term: FedProx with the same mu is its synchronous twin, and FedAsync with rho = 0 the
   plain loop's. An asynchronous run also trains the `concurrency` clients still in flight at its end, which count
   for nothing: over 10 rows that is 10% of its client work.

    python bench/async_throughput.py --repeats 3
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CLOCK_WORKLOADS = {
    "digits, 10 clients (main job)": ["num_rounds=6"],
    "random 1x28x28, 100 clients, logreg": ["num_clients=100", "num_rounds=6", "dataset=random",
                                            "dataset.num_samples=3000", "dataset.shape=[1,28,28]",
                                            "dataset.test_samples=100", "partition=iid", "model=logreg",
                                            "client.local_epochs=1", "fraction_evaluate=0.0"],
}


def throughput_overrides(clients: int, concurrency: int, rows: int) -> list[str]:
    return [f"num_clients={clients}", f"num_rounds={rows}", "dataset=random", f"dataset.num_samples={clients * 20}",
            "dataset.shape=[64]", "dataset.test_samples=200", "partition=iid", "model=mlp", "client.local_epochs=1",
            "client.val_fraction=0.0", "fraction_evaluate=0.0", "server.checkpoint_every=0", "devices.model=lognormal"]


def worker(overrides: list[str], clock: bool) -> dict[str, float]:
    """One run in this process; the rounds' wall seconds (round 0's central evaluation excluded)."""
    from fedsim.config import compose_experiment
    from fedsim.run import run_experiment

    if not clock:
        import fedsim.grid.fedsim_grid as fedsim_grid

        fedsim_grid.is_training = lambda messages: False  # the synchronous exchange skips the clock
    with tempfile.TemporaryDirectory() as folder:
        run_experiment(compose_experiment([*overrides, "progress=false"]), Path(folder), show_progress=False)
        with open(Path(folder) / "metrics.csv", newline="") as stream:
            rows = list(csv.DictReader(stream))
    seconds = float(rows[-1]["wall_seconds"]) - float(rows[0]["wall_seconds"])
    return {"seconds": seconds, "rows": len(rows) - 1}


def measure(overrides: list[str], clock: bool = True) -> dict[str, float]:
    command = [sys.executable, __file__, "--worker", json.dumps({"overrides": overrides, "clock": clock})]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def clock_cost_table(repeats: int) -> None:
    """The clock's own work in a synchronous training exchange (`fedsim.clock.clocked_round`) with replies that
    arrive at once, by number of clients: what it adds to any round, measured without a round's noise around it."""
    import functools
    import timeit

    import numpy as np
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fedsim.clock import VirtualClock, clocked_round
    from fedsim.devices import device_model

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    model = ArrayRecord({"w": Array(np.zeros((10, 784), np.float32)), "b": Array(np.zeros(10, np.float32))})
    print("| clients in the round | clock's work, ms / round (lognormal devices, 2 arrays) |")
    print("|---|---|")
    for clients in (10, 100, 1000):
        clock = VirtualClock(device_model({"model": "lognormal"}, clients, 0), local_epochs=1)
        messages = []
        for node in range(clients):
            message = Message(RecordDict({"arrays": model, "config": ConfigRecord({"server-round": 1})}),
                              dst_node_id=node, message_type="train")
            message.metadata.__dict__["_message_id"] = f"m{node}"
            messages.append(message)
        replies = [Message(RecordDict({"arrays": model, "metrics": MetricRecord({"num-examples": 30})}),
                           reply_to=message) for message in messages]
        seconds = timeit.repeat(functools.partial(clocked_round, clock, messages, int, lambda _, r=replies: r),
                                number=10, repeat=max(repeats, 3))
        print(f"| {clients} | {1000 * statistics.median(seconds) / 10:.2f} |", flush=True)
    print()


def clock_table(repeats: int) -> None:
    print("| workload | s / round, clock | s / round, no clock | clock's share |")
    print("|---|---|---|---|")
    for name, overrides in CLOCK_WORKLOADS.items():
        with_clock, without = [], []
        for _ in range(repeats):  # interleaved, so that drift in the machine's speed hits both alike
            run = measure(overrides, clock=True)
            with_clock.append(run["seconds"] / run["rows"])
            run = measure(overrides, clock=False)
            without.append(run["seconds"] / run["rows"])
        a, b = statistics.median(with_clock), statistics.median(without)
        print(f"| {name} | {a:.3f} | {b:.3f} | {100 * (a - b) / b:+.1f}% |", flush=True)


def throughput_table(repeats: int, clients: int, concurrency: int, rows: int) -> None:
    base = throughput_overrides(clients, concurrency, rows)
    sampled = f"fraction_train={concurrency / clients}"
    runners = {  # FedAsync's clients add the proximal term (rho 0.005): FedProx with that mu is its synchronous twin
        f"FedAvg, {concurrency} sampled per round": ["strategy=fedavg", sampled],
        f"FedProx mu = 0.005, {concurrency} sampled per round": ["strategy=fedprox", sampled,
                                                                 "strategy.proximal_mu=0.005"],
        f"FedAsync, C = {concurrency} (rho = 0.005)": ["strategy=fedasync", f"strategy.concurrency={concurrency}"],
        f"FedAsync, C = {concurrency}, rho = 0": ["strategy=fedasync", f"strategy.concurrency={concurrency}",
                                                 "strategy.proximal_mu=0.0"],
        f"FedBuff, C = {concurrency}, K = 10": ["strategy=fedbuff", f"strategy.concurrency={concurrency}"],
    }
    print(f"\n| {clients} clients, {rows} rows | client updates / s | s / row |")
    print("|---|---|---|")
    for name, overrides in runners.items():
        rates, per_row = [], []
        for _ in range(repeats):
            run = measure([*base, *overrides])
            rates.append(run["rows"] * concurrency / run["seconds"])
            per_row.append(run["seconds"] / run["rows"])
        print(f"| {name} | {statistics.median(rates):.1f} | {statistics.median(per_row):.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--rows", type=int, default=10)
    parser.add_argument("--only", choices=("clock", "throughput"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        job = json.loads(args.worker)
        print(json.dumps(worker(job["overrides"], job["clock"])))
        return
    if args.only != "throughput":
        clock_cost_table(args.repeats)
        clock_table(args.repeats)
    if args.only != "clock":
        throughput_table(args.repeats, args.clients, args.concurrency, args.rows)


if __name__ == "__main__":
    main()
