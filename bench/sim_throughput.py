"""Simulation throughput: seconds per round of workload W1 on each fedsim engine, beside Flower and a plain loop.

W1 (as /work/shared/bench/flower_reference.py defines it): FedAvg over N clients, every client trains every round,
one local epoch of SGD (lr 0.01, batch 32, no momentum) on the FedAvg paper's CNN narrowed to conv5x5(16)-pool-
conv5x5(32)-pool-fc128-fc10 (fedsim: `model=cnn model.channels=[16,32] model.hidden=128 model.padding=0`) with 1x28x28
random inputs (`dataset=random`), S samples per client. fedsim's rounds also evaluate the global model centrally on
100 test rows; the references do not evaluate.

Every measurement runs in its own process (`--worker`), `--repeats` times; the table shows medians, the ratio to
the plain loop, how many times faster than Flower's runtime each runner is, and the training FLOPs per second
against the device's float32 matmul ceiling (bench/compute_rate.py). The reference runners run only on CPU (no
`--no-references`). `--profile ENGINE` adds a torch.profiler table of where that engine's time goes.

    python bench/sim_throughput.py --clients 20 100 --repeats 3
    python bench/sim_throughput.py --clients 100 1000 --engines inprocess vectorized --no-references \
        --profile vectorized   # on a GPU
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


def engine_overrides(engine: str, max_cohort: str) -> list[str]:
    """`inprocess`, `inprocess:W` (W worker threads), `vectorized`: the engine's config overrides."""
    name, _, workers = engine.partition(":")
    overrides = [f"engine={name}"]
    if workers:
        overrides.append(f"engine.workers={workers}")
    if name == "vectorized":
        overrides.append(f"engine.max_cohort={max_cohort}")
    return overrides


def w1_overrides(clients: int, per_client: int, rounds: int, engine: str, max_cohort: str) -> list[str]:
    return [
        f"num_clients={clients}", f"num_rounds={rounds}", "dataset=random",
        f"dataset.num_samples={clients * per_client}", "dataset.shape=[1,28,28]", "dataset.test_samples=100",
        "partition=iid", "model=cnn", "model.channels=[16,32]", "model.hidden=128", "model.padding=0",
        "client.local_epochs=1", "client.batch_size=32", "client.lr=0.01", "client.momentum=0.0",
        "client.val_fraction=0.0",
        "fraction_train=1.0", "fraction_evaluate=0.0", "server.checkpoint_every=0", "progress=false",
        *engine_overrides(engine, max_cohort),
    ]


def scale_overrides(population: int, cohort: int, per_client: int, rounds: int, engine: str,
                    max_cohort: str) -> list[str]:
    return [
        f"num_clients={population}", f"num_rounds={rounds}", "dataset=random",
        f"dataset.num_samples={population * per_client}", "dataset.shape=[60]", "dataset.test_samples=100",
        "partition=iid", "model=logreg", "client.local_epochs=1", "client.batch_size=32", "client.lr=0.01",
        "client.momentum=0.0", "client.val_fraction=0.0",
        f"fraction_train={cohort / population}", "fraction_evaluate=0.0", "server.checkpoint_every=0", "progress=false",
        *engine_overrides(engine, max_cohort),
    ]


def worker(overrides: list[str], profile: bool = False) -> None:
    """Run one experiment; print its seconds per round (central evaluation of round 0 to that of the last round),
    the setup time and peak RSS as one JSON line. With `profile`, print torch.profiler's table of the operators that
        took the most time over rounds 2 onward (round 1 pays one-time costs: imports, kernel selection), with the
    ClientApp calls in the main thread one after another (the profiler records only the thread it started in)."""
    import fedsim.recorder
    from fedsim.config import compose_experiment
    from fedsim.run import run_experiment

    stamps: dict[int, float] = {}
    original = fedsim.recorder.Recorder.record_round

    profiler = None
    if profile:  # torch.profiler sees this thread only: run the ClientApp calls here, one at a time
        from fedsim.engines.inprocess import InProcessGrid

        deliver = InProcessGrid.send_and_receive

        def in_this_thread(self, messages, *, timeout=None):
            self.workers = 1
            return deliver(self, messages, timeout=None)

        InProcessGrid.send_and_receive = in_this_thread
        profiler = _profiler()

    def record_round(self, record):
        stamps[record.server_round] = time.perf_counter()
        if profiler is not None and record.server_round == 1:
            profiler.start()
        return original(self, record)

    fedsim.recorder.Recorder.record_round = record_round
    start = time.perf_counter()
    experiment = compose_experiment(overrides)
    with tempfile.TemporaryDirectory() as run_dir:
        run_experiment(experiment, run_dir, show_progress=False)
    rounds = max(stamps)
    if profiler is not None:
        profiler.stop()
        averages = profiler.key_averages()
        on_gpu = any(event.self_device_time_total > 0 for event in averages)
        print(averages.table(sort_by="self_device_time_total" if on_gpu else "self_cpu_time_total", row_limit=15,
                             max_name_column_width=48), flush=True)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"s_per_round": (stamps[rounds] - stamps[0]) / rounds, "setup_s": stamps[0] - start,
                      "peak_rss_mib": peak_kib / 1024}), flush=True)


def _profiler():
    import torch.profiler

    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    return torch.profiler.profile(activities=activities)


def engine_spec(text: str) -> str:
    name, _, workers = text.partition(":")
    if name not in ("inprocess", "vectorized") or (workers and (not workers.isdigit() or name != "inprocess")):
        raise argparse.ArgumentTypeError(f"{text!r}: inprocess, inprocess:<workers> or vectorized")
    return text


def run_worker(overrides: list[str], profile: bool = False) -> dict:
    command = [sys.executable, __file__, "--worker", json.dumps(overrides)] + (["--profile-worker"] if profile else [])
    out = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"worker failed ({out.returncode}):\n{out.stderr[-3000:]}")
    if profile:
        print("\n".join(line for line in out.stdout.splitlines() if not line.startswith("{")), flush=True)
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
    parser.add_argument("--profile-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, nargs="+", default=[20])
    parser.add_argument("--per-client", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--engines", nargs="+", default=["inprocess", "vectorized"], type=engine_spec,
                        help="inprocess, inprocess:W (engine.workers=W; plain inprocess is workers=auto), vectorized")
    parser.add_argument("--references", nargs="*", default=["plain", "flower"], choices=["plain", "flower"])
    parser.add_argument("--no-references", action="store_true", help="time only fedsim's engines")
    parser.add_argument("--max-cohort", default="auto", help="engine.max_cohort of the vectorized engine")
    parser.add_argument("--profile", type=engine_spec, metavar="ENGINE",
                        help="also run ENGINE once per client count under torch.profiler and print where the time goes")
    parser.add_argument("--scale", action="store_true",
                        help="peak memory with --population clients, --cohort per round")
    parser.add_argument("--population", type=int, nargs="+", default=[10000])
    parser.add_argument("--cohort", type=int, default=100)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker), args.profile_worker)
    elif args.scale:
        scale_table(args)
    else:
        w1_table(args)


def scale_table(args: argparse.Namespace) -> None:
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


def w1_table(args: argparse.Namespace) -> None:
    """Seconds per round of every runner, as ratios to the plain loop and to Flower, and as a compute rate against
    the matmul ceiling of the device fedsim trains on (CUDA when present; the references always run on CPU)."""
    import torch

    from compute_rate import client_epoch_flops, matmul_tflops

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ceiling, ceiling_tf32 = matmul_tflops(device), matmul_tflops(device, tf32=True)
    epoch_flops = client_epoch_flops(args.per_client)
    references = [] if args.no_references else args.references
    print(f"W1: CNN 1x28x28, {args.per_client} samples per client, 1 epoch, batch 32, lr 0.01; {args.rounds} rounds "
          f"per run, median of {args.repeats} runs; torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    print(f"{device.type} float32 matmul ceiling {ceiling:.2f} TFLOP/s"
          + (f" ({ceiling_tf32:.1f} with TF32)" if device.type == "cuda" else "")
          + f"; W1 training {epoch_flops / 1e9:.2f} GFLOP per client per round")
    print(f"{'clients':>8}  {'runner':<22}{'s/round':>10}{'vs plain':>10}{'Flower/it':>10}{'TFLOP/s':>9}"
          f"{'of ceil':>9}   runs")
    for clients in args.clients:
        results: dict[str, list[float]] = {}
        for _ in range(args.repeats):  # interleaved, so that load from elsewhere falls on every runner alike
            for runner in references:
                results.setdefault(runner, []).append(run_reference(runner, clients, args.per_client, args.rounds))
            for engine in args.engines:
                measured = run_worker(w1_overrides(clients, args.per_client, args.rounds, engine, args.max_cohort))
                results.setdefault(f"fedsim {engine}", []).append(measured["s_per_round"])
        medians = {runner: statistics.median(times) for runner, times in results.items()}
        for runner, times in results.items():
            median = medians[runner]
            vs_plain = f"{median / medians['plain']:.2f}x" if "plain" in medians else "-"
            flower_over = f"{medians['flower'] / median:.2f}x" if "flower" in medians else "-"
            tflops = clients * epoch_flops / median / 1e12
            same_device = runner.startswith("fedsim") or device.type == "cpu"  # the references run on CPU
            share = f"{tflops / ceiling:.0%}" if same_device else "-"
            print(f"{clients:>8}  {runner:<22}{median:>10.3f}{vs_plain:>10}{flower_over:>10}{tflops:>9.3f}{share:>9}   "
                  f"{' '.join(f'{t:.3f}' for t in times)}", flush=True)
        if args.profile:
            print(f"\nprofile: fedsim {args.profile}, {clients} clients, rounds 2-{args.rounds}")
            run_worker(w1_overrides(clients, args.per_client, args.rounds, args.profile, args.max_cohort), profile=True)


if __name__ == "__main__":
    main()
