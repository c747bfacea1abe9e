"""What update compression costs a round: encoding on the clients, decoding on the server, counting the bytes.

The goal (issue): encoding and decoding cost well under the round's training time, at 10 and 100 clients of a
1M-parameter model. Two tables, medians over `--repeats`:

1. codec: each codec on one real 1,010,850-parameter update (fedsim's MLP 784-1024-200-10 after one local epoch
   of SGD on 200 random rows), in an otherwise idle process: payload bytes, the ratio to float32, encode and
   decode milliseconds, and the same inside the layer a round runs them in (`compress_reply`: the update from the
   two models' Arrays, the codec, the frame; `decompress_reply`: the codec, global + decoded into new Arrays), and
   `wire_bytes` of the reply that leaves the client.
2. rounds: real fedsim rounds (in-process engine, random 1x28x28 rows, `--rows` per client, `--epochs` local
   epochs, batch 32, every client every round, no federated evaluation, no checkpoints; `--rounds` trained rounds
   a run, 1 by default), each codec in turn; per trained round, from instrumented runs: the wall seconds
   (`metrics.csv` `round_seconds`), the clients' training (`fedsim.client._train`), encoding (`compress_reply`)
   and the server's decoding (`decompress_reply`), all three summed over the clients, and the byte counting
   (`fedsim.grid.traffic.batch_bytes` over the round's messages, both ways; round 0's discovery messages
   included). Each repetition is one process running every codec, in an order rotated per repetition, after a
   warm-up run of 2 clients, so that drift in the machine's speed hits all codecs alike. The in-process engine
   trains on two worker threads, so the sums over clients can exceed the round's wall time, and a client's
   encoding shares the cores with another client's training.

    python bench/compression_cost.py --repeats 3          # 6 to 8 minutes on 2 cores
    python bench/compression_cost.py --quick              # 10 and 30 clients, 1 repetition: 2 to 3 minutes
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CODECS = ("none", "fedzip", "topk", "randk", "qsgd", "fp16", "bf16")
HIDDEN = "[1024,200]"  # 784 -> 1024 -> 200 -> 10: 1,010,850 parameters
TIMED = ("training", "encode", "decode", "bytes")


def round_overrides(clients: int, rows: int, epochs: int, rounds: int, codec: str) -> list[str]:
    return [f"num_clients={clients}", f"num_rounds={rounds}", "dataset=random", f"dataset.num_samples={clients * rows}",
            "dataset.shape=[1,28,28]", "dataset.test_samples=200", "partition=iid", "model=mlp",
            f"model.hidden={HIDDEN}", f"client.local_epochs={epochs}", "client.val_fraction=0.0",
            "fraction_evaluate=0.0", "server.checkpoint_every=0", "progress=false", f"compression={codec}"]


def _instrument() -> dict[str, list[float]]:
    """Wrap the four functions a round's compression cost lives in; each call appends its seconds (threads too)."""
    import fedsim.client as client_module
    import fedsim.grid.fedsim_grid as grid_module
    import fedsim.grid.traffic as traffic_module

    spent: dict[str, list[float]] = {key: [] for key in TIMED}
    lock = threading.Lock()

    def timed(function: Callable[..., Any], key: str) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                with lock:
                    spent[key].append(time.perf_counter() - start)
        return wrapper

    client_module._train = timed(client_module._train, "training")
    client_module.compress_reply = timed(client_module.compress_reply, "encode")
    grid_module.decompress_reply = timed(grid_module.decompress_reply, "decode")
    traffic_module.batch_bytes = timed(traffic_module.batch_bytes, "bytes")
    return spent


def worker(job: dict[str, Any]) -> dict[str, dict[str, float]]:
    """One repetition in this process: every codec of `job` in its order, per trained round."""
    from fedsim.config import compose_experiment
    from fedsim.run import run_experiment

    spent = _instrument()
    warm_up = round_overrides(2, job["rows"], 1, 1, job["codecs"][0])  # torch's and the engine's first calls
    with tempfile.TemporaryDirectory() as folder:
        run_experiment(compose_experiment(warm_up), Path(folder), show_progress=False)
    results = {}
    for codec in job["codecs"]:
        for calls in spent.values():
            calls.clear()
        overrides = round_overrides(job["clients"], job["rows"], job["epochs"], job["rounds"], codec)
        with tempfile.TemporaryDirectory() as folder:
            run_experiment(compose_experiment(overrides), Path(folder), show_progress=False)
            with open(Path(folder) / "metrics.csv", newline="") as stream:
                trained = [row for row in csv.DictReader(stream) if int(row["round"]) > 0]
        rounds = len(trained)
        results[codec] = {
            "seconds": statistics.mean(float(row["round_seconds"]) for row in trained),
            "uplink_mb": statistics.mean(float(row["bytes_up"]) for row in trained) / 1e6,
            **{key: sum(spent[key]) / rounds for key in TIMED},
        }
    return results


def measure(job: dict[str, Any]) -> dict[str, dict[str, float]]:
    command = [sys.executable, __file__, "--worker", json.dumps(job)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"worker failed ({job}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def trained_update(rows: int = 200, seed: int = 0) -> dict[str, Any]:
    """Δ of fedsim's 1M-parameter MLP after one local epoch (batch 32, SGD lr 0.1, momentum 0.9) on random rows."""
    import numpy as np
    import torch

    from fedsim.models import MLP

    torch.manual_seed(seed)
    model = MLP((1, 28, 28), 10, hidden=json.loads(HIDDEN))
    start = {name: value.detach().clone() for name, value in model.state_dict().items()}
    inputs, labels = torch.rand(rows, 1, 28, 28), torch.randint(0, 10, (rows,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for batch in torch.arange(rows).split(32):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs[batch]), labels[batch]).backward()
        optimizer.step()
    return {name: (value.detach() - start[name]).numpy().astype(np.float32)
            for name, value in model.state_dict().items()}


def _exchange(update: dict[str, Any], experiment: dict[str, Any]) -> tuple[Any, Any, Any]:
    """A train message carrying a global model, the client's reply carrying global + `update`, and its Context."""
    import numpy as np
    from flwr.app import Array, ArrayRecord, Context, Message, MessageType, MetricRecord, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fedsim.protocol.experiment import experiment_record
    from fedsim.protocol.keys import ARRAYS_RECORD, CONFIG_RECORD, METRICS_RECORD, NUM_EXAMPLES, ROUND_KEY

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1  # as an engine sets it
    rng = np.random.default_rng(0)
    start = {name: (0.05 * rng.standard_normal(value.shape)).astype(np.float32) for name, value in update.items()}
    config = experiment_record(experiment)
    config[ROUND_KEY] = 1
    sent = Message(RecordDict({ARRAYS_RECORD: ArrayRecord({k: Array(v) for k, v in start.items()}),
                               CONFIG_RECORD: config}), dst_node_id=7, message_type=MessageType.TRAIN)
    reply = Message(RecordDict({ARRAYS_RECORD: ArrayRecord({k: Array(v + update[k]) for k, v in start.items()}),
                                METRICS_RECORD: MetricRecord({NUM_EXAMPLES: 200})}), reply_to=sent)
    context = Context(run_id=1, node_id=7, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    return sent, reply, context


def _median_seconds(function: Callable[[], Any], calls: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(calls):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def codec_table(repeats: int) -> None:
    """Each codec on one update, alone (encode, decode) and inside the layer a round runs it in (`compress_reply`
    on the client, `decompress_reply` on the server, `wire_bytes` of the reply), on an otherwise idle process."""
    import numpy as np

    from fedsim.compression.message import compress_reply, compressor_from, decompress_reply
    from fedsim.config import compose_experiment
    from fedsim.grid.traffic import wire_bytes

    update = trained_update()
    shapes = {name: value.shape for name, value in update.items()}
    raw = 4 * sum(value.size for value in update.values())
    calls = max(repeats, 3)
    print(f"Codecs on one trained update of {raw // 4:,} parameters ({raw / 1e6:.2f} MB as float32), median of "
          f"{calls} calls; the layer's columns include the codec's:\n")
    print("| codec | payload bytes | ratio to float32 | encode, ms | decode, ms | client layer, ms | server layer, ms "
          "| reply's wire_bytes, ms |")
    print("|---|---|---|---|---|---|---|---|")
    for codec in CODECS:
        experiment = compose_experiment([f"compression={codec}"])
        compressor = compressor_from(experiment)
        cells = ["—", "—", "—", "—"]
        if compressor is not None:
            encode, payload = _median_seconds(lambda c=compressor: c.encode(update, np.random.default_rng(0)), calls)
            decode, _ = _median_seconds(lambda c=compressor, p=payload: c.decode(p, shapes), calls)
            cells = [f"{len(payload):,}", f"{raw / len(payload):.1f}", f"{1000 * encode:.1f}", f"{1000 * decode:.1f}"]
        sent, reply, context = _exchange(update, experiment)
        client, packed = _median_seconds(lambda s=sent, r=reply, x=context: compress_reply(s, r, x), calls)
        server, _ = _median_seconds(lambda p=packed, s=sent, c=compressor: decompress_reply(p, s, c), calls)
        counting, _ = _median_seconds(lambda p=packed: wire_bytes(p), calls)
        print(f"| {codec} | {' | '.join(cells)} | {1000 * client:.1f} | {1000 * server:.1f} | "
              f"{1000 * counting:.1f} |", flush=True)
    print()


def rounds_table(clients_list: list[int], repeats: int, rows: int, epochs: int, rounds: int) -> None:
    print(f"Rounds of the 1M-parameter MLP, {rows} rows per client, {epochs} local epoch(s), per trained round "
          f"({rounds} trained round(s) a run), median of {repeats} run(s):\n")
    print("| clients | codec | s / round | vs none | training Σ, s | encode Σ, s | decode Σ, s | byte counting, s | "
          "(encode + decode) / training | uplink MB / round |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for clients in clients_list:
        runs: dict[str, list[dict[str, float]]] = {codec: [] for codec in CODECS}
        for repeat in range(repeats):
            order = list(CODECS[repeat % len(CODECS):] + CODECS[:repeat % len(CODECS)])
            job = {"clients": clients, "rows": rows, "epochs": epochs, "rounds": rounds, "codecs": order}
            for codec, result in measure(job).items():
                runs[codec].append(result)
        median = {codec: {key: statistics.median(run[key] for run in results) for key in results[0]}
                  for codec, results in runs.items()}
        base = median["none"]["seconds"]
        for codec in CODECS:
            m = median[codec]
            share = (m["encode"] + m["decode"]) / m["training"]
            print(f"| {clients} | {codec} | {m['seconds']:.3f} | {100 * (m['seconds'] - base) / base:+.0f}% | "
                  f"{m['training']:.3f} | {m['encode']:.3f} | {m['decode']:.3f} | {m['bytes']:.3f} | "
                  f"{100 * share:.1f}% | {m['uplink_mb']:.3f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--rows", type=int, default=200, help="training rows per client")
    parser.add_argument("--epochs", type=int, default=1, help="local epochs")
    parser.add_argument("--rounds", type=int, default=1, help="trained rounds a run")
    parser.add_argument("--quick", action="store_true", help="10 and 30 clients, one repetition")
    parser.add_argument("--only", choices=("codec", "rounds"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.quick:
        args.clients, args.repeats = [10, 30], 1
    started = time.perf_counter()
    if args.only != "rounds":
        codec_table(args.repeats)
    if args.only != "codec":
        rounds_table(args.clients, args.repeats, args.rows, args.epochs, args.rounds)
    print(f"\nbench time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
