"""What one aggregation costs the server: robust rules at 10, 100 and 1000 clients of a 1M-parameter model.

For each rule and cohort size, the strategy's `aggregate_train` on synthetic replies (the global model plus a
Gaussian update per client, float32), timed as the median of `--repeats` calls, beside the round's training: one
client's local epoch of the same 1M-parameter MLP on `--rows` rows, times the clients (the in-process engine trains
them one after another on these cores). The goal: aggregation never costs more than the round's training.

    python bench/aggregation_cost.py [--clients 10 100 1000] [--rules fedavg ida flag flag:start=projected ...]
"""

from __future__ import annotations

import argparse
import gc
import logging
import statistics
import time

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedsim.config import compose_experiment
from fedsim.server import build_strategy

# A 1M-parameter MLP (784 -> 1024 -> 200 -> 10 has 1,030,810 parameters)
LAYERS = (784, 1024, 200, 10)
EVERY_NODE = {"fraction_train": 1.0, "fraction_evaluate": 0.0, "min_available_nodes": 1, "min_train_nodes": 1}


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for fan_in, fan_out in zip(LAYERS, LAYERS[1:], strict=False):
        layers += [torch.nn.Linear(fan_in, fan_out), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])


def replies(global_arrays: dict[str, np.ndarray], clients: int, rng: np.random.Generator) -> list[Message]:
    """Each client's reply: the global model plus N(0, 0.01²) per value, 100 examples, as aggregate_train sees it."""
    out = []
    for node in range(1, clients + 1):
        arrays = ArrayRecord({name: Array(value + 0.01 * rng.standard_normal(value.shape, dtype=np.float32))
                              for name, value in global_arrays.items()})
        instruction = Message(RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
        instruction.metadata.__dict__["_message_id"] = f"m{node}"
        content = RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 100, "train_loss": 1.0,
                                                                         "train_accuracy": 0.5})})
        reply = Message(content, reply_to=instruction)
        reply.metadata.__dict__["_src_node_id"] = node
        out.append(reply)
    return out


def strategy_for(rule: str, clients: int):  # type: ignore[no-untyped-def]
    """The configured strategy `rule` ("flag" or, with strategy overrides, "flag:start=projected")."""
    rule, _, extras = rule.partition(":")
    overrides = [f"strategy={rule}", f"num_clients={clients}",
                 *(f"strategy.{setting}" for setting in extras.split(",") if setting)]
    if rule in ("multikrum", "krum", "bulyan"):
        overrides.append(f"strategy.num_malicious_nodes={max(1, clients // 10) if rule != 'bulyan' else 0}")
    experiment = compose_experiment(overrides)
    experiment["strategy"].update(EVERY_NODE)
    return build_strategy(experiment)


def training_seconds(rows: int, repeats: int) -> float:
    """One client's local epoch (batches of 32, SGD) of the 1M-parameter MLP on `rows` rows: the median time."""
    net, x, y = model(), torch.randn(rows, LAYERS[0]), torch.randint(0, LAYERS[-1], (rows,))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for start in range(0, rows, 32):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(x[start:start + 32]), y[start:start + 32]).backward()
            optimizer.step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--rules", nargs="+", default=["fedavg", "ida", "flag", "flag:start=projected", "multikrum",
                                                       "median"], help="strategy[:key=value,...]")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=200, help="rows per client for the training estimate")
    args = parser.parse_args()
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    logging.getLogger("flwr").setLevel(logging.ERROR)  # Flower's per-aggregation INFO lines would break the table
    net = model()
    global_arrays = {name: value.detach().numpy().copy() for name, value in net.state_dict().items()}
    parameters = sum(value.size for value in global_arrays.values())
    per_client = training_seconds(args.rows, args.repeats)
    print(f"model: MLP {LAYERS}, {parameters:,} parameters; one client's local epoch on {args.rows} rows: "
          f"{per_client:.3f} s; torch threads {torch.get_num_threads()}\n")
    print("| clients | rule | s / aggregation (median) | round's training, s | aggregation / training |")
    print("|---|---|---|---|---|")
    for clients in args.clients:
        batch = replies(global_arrays, clients, np.random.default_rng(clients))
        training = per_client * clients
        for rule in args.rules:
            strategy = strategy_for(rule, clients)
            strategy.current_arrays = ArrayRecord({name: Array(value) for name, value in global_arrays.items()})
            times = []
            for _ in range(args.repeats):
                gc.collect()
                started = time.perf_counter()
                arrays, _ = strategy.aggregate_train(1, batch)
                times.append(time.perf_counter() - started)
                assert arrays is not None
            seconds = statistics.median(times)
            print(f"| {clients} | {rule} | {seconds:.3f} | {training:.1f} | {seconds / training:.3f} |", flush=True)
        del batch
        gc.collect()


if __name__ == "__main__":
    main()
