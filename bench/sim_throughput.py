"""Simulation throughput: seconds per round of workload W1 on each fedsim engine, beside Flower and a plain loop.

W1 (as /work/shared/bench/flower_reference.py defines it): FedAvg over N clients, every client trains every round,
one local epoch of SGD (lr 0.01, batch 32, no momentum) on the FedAvg paper's CNN narrowed to conv5x5(16)-pool-
conv5x5(32)-pool-fc128-fc10 (fedsim: `model=cnn model.channels=[16,32] model.hidden=128 model.padding=0`) with 1x28x28
random inputs (`dataset=random`), S samples per client. fedsim's rounds also evaluate the global model centrally on
100 test rows; the references do not evaluate.

Every measurement runs in its own process (`--worker`), `--repeats` times; the table shows medians and the ratio to
the plain loop. The reference runners are run only on CPU (no `--no-references`).

    python bench/sim_throughput.py --clients 20 100 --repeats 3
    python bench/sim_throughput.py --clients 100 1000 --engines inprocess vectorized --no-references   # on a GPU
    python bench/sim_throughput.py --scale --population 10000 --cohort 100   # peak memory, 10,000 clients

`--scale` runs the vectorized engine (or `--engines`) on a population of clients of which `--cohort` train each
round, with a small model (logistic regression on 60 features), and reports peak RSS: client data stays on the host
and only the sampled cohort is stacked, so the engine's memory follows the cohort, not the population.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REFERENCE = Path(os.environ.get("FEDSIM_FLOWER_REFERENCE", "/work/shared/bench/flower_reference.py"))


def w1_overrides(clients: int, per_client: int, rounds: int, engine: str, max_cohort: str) -> list[str]:
    overrides = [
        f"num_clients={clients}", f"num_rounds={rounds}", "dataset=random", f"dataset.num_samples={clients * per_client}",
        "dataset.shape=[1,28,28]", "dataset.test_samples=100", "partition=iid",
        "model=cnn", "model.channels=[16,32]", "model.hidden=128", "model.padding=0",
        "client.local_epochs=1", "client.batch_size=32", "client.lr=0.01", "client.momentum=0.0", "client.val_fraction=0.0",
        "fraction_train=1.0", "fraction_evaluate=0.0", "server.checkpoint_every=0", "progress=false", f"engine={engine}",
    ]
    if engine == "vectorized":
        overrides.append(f"engine.max_cohort={max_cohort}")
    return overrides


def scale_overrides(population: int, cohort: int, per_client: int, rounds: int, engine: str, max_cohort: str) -> list[str]:
    overrides = [
        f"num_clients={population}", f"num_rounds={rounds}", "dataset=random", f"dataset.num_samples={population * per_client}",
        "dataset.shape=[60]", "dataset.test_samples=100", "partition=iid", "model=logreg",
        "client.local_epochs=1", "client.batch_size=32", "client.lr=0.01", "client.momentum=0.0", "client.val_fraction=0.0",
        f"fraction_train={cohort / population}", "fraction_evaluate=0.0", "server.checkpoint_every=0", "progress=false",
        f"engine={engine}",
    ]
    if engine == "vectorized":
        overrides.append(f"engine.max_cohort={max_cohort}")
    return overrides


def worker(overrides: list[str]) -> None:
    """Run one experiment; print its seconds per round (central evaluation of round 0 to that of the last round),
    the setup time and peak RSS as one JSON line."""
    import fedsim.results
    from fedsim.config import compose_experiment
    from fedsim.run import run_experiment

    stamps: dict[int, float] = {}
    original = fedsim.results.Recorder.record_round

    def record_round(self, server_round, *args, **kwargs):
        stamps[int(server_round)] = time.perf_counter()
        return original(self, server_round, *args, **kwargs)

    fedsim.results.Recorder.record_round = record_round
    start = time.perf_counter()
    experiment = compose_experiment(overrides)
    with tempfile.TemporaryDirectory() as run_dir:
        run_experiment(experiment, run_dir, show_progress=False)
    rounds = max(stamps)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"s_per_round": (stamps[rounds] - stamps[0]) / rounds, "setup_s": stamps[0] - start,
                      "peak_rss_mib": peak_kib / 1024}), flush=True)


def run_worker(overrides: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(overrides)], capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"worker failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])


def run_reference(runner: str, clients: int, per_client: int, rounds: int) -> float:
    command = [sys.executable, str(REFERENCE), "--runner", runner, "--clients", str(clients),
               "--per-client", str(per_client), "--rounds", str(rounds)]
    out = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith(f"runner={runner}")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(command)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    fields = dict(part.split("=", 1) for part in lines[-1].split())
    return float(fields["s_per_round"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, nargs="+", default=[20])
    parser.add_argument("--per-client", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--engines", nargs="+", default=["inprocess", "vectorized"], choices=["inprocess", "vectorized"])
    parser.add_argument("--references", nargs="*", default=["plain", "flower"], choices=["plain", "flower"])
    parser.add_argument("--no-references", action="store_true", help="time only fedsim's engines")
    parser.add_argument("--max-cohort", default="auto", help="engine.max_cohort of the vectorized engine")
    parser.add_argument("--scale", action="store_true", help="peak memory with --population clients, --cohort per round")
    parser.add_argument("--population", type=int, nargs="+", default=[10000])
    parser.add_argument("--cohort", type=int, default=100)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    if args.scale:
        print(f"scale: logreg on 60 features, {args.per_client} rows per client, cohort {args.cohort}, "
              f"{args.rounds} rounds, {args.repeats} repeats")
        print(f"{'engine':<12}{'population':>12}{'s/round':>10}{'setup s':>10}{'peak RSS MiB':>14}{'data MiB':>10}")
        for population in args.population:
            data_mib = population * args.per_client * 60 * 4 / 2**20
            for engine in args.engines:
                runs = [run_worker(scale_overrides(population, args.cohort, args.per_client, args.rounds, engine,
                                                   args.max_cohort)) for _ in range(args.repeats)]
                print(f"{engine:<12}{population:>12}{statistics.median(r['s_per_round'] for r in runs):>10.3f}"
                      f"{statistics.median(r['setup_s'] for r in runs):>10.1f}"
                      f"{statistics.median(r['peak_rss_mib'] for r in runs):>14.0f}{data_mib:>10.0f}", flush=True)
        return
    references = [] if args.no_references else args.references
    print(f"W1: CNN 1x28x28, {args.per_client} samples per client, 1 epoch, batch 32, lr 0.01; {args.rounds} rounds "
          f"per run, median of {args.repeats} runs; torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    print(f"{'clients':>8}  {'runner':<22}{'s/round':>10}{'vs plain':>10}   runs")
    for clients in args.clients:
        results: dict[str, list[float]] = {}
        for _ in range(args.repeats):  # interleaved, so that load from elsewhere falls on every runner alike
            for runner in references:
                results.setdefault(runner, []).append(run_reference(runner, clients, args.per_client, args.rounds))
            for engine in args.engines:
                measured = run_worker(w1_overrides(clients, args.per_client, args.rounds, engine, args.max_cohort))
                results.setdefault(f"fedsim {engine}", []).append(measured["s_per_round"])
        plain = statistics.median(results["plain"]) if "plain" in results else None
        for runner, times in results.items():
            median = statistics.median(times)
            ratio = f"{median / plain:.2f}x" if plain else "-"
            print(f"{clients:>8}  {runner:<22}{median:>10.3f}{ratio:>10}   {' '.join(f'{t:.3f}' for t in times)}",
                  flush=True)


if __name__ == "__main__":
    main()
