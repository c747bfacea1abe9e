"""Reproduction (issue 20, 5a): synchronous FedAvg against FedAsync and FedBuff on a federation of lognormal devices.

FedBuff's paper claims it reaches a target accuracy in less (simulated) time than synchronous FL and than FedAsync
(3.3x and up to 2.5x more efficient). The setting here, offline: scikit-learn's digits, 20 clients, Dirichlet(0.5)
label skew, fedsim's MLP, one local epoch; devices with lognormal speed (median 1000 rows/s, sigma 1) and bandwidth
(median 10 MB/s, sigma 1). Every strategy does the same client work per row: FedAvg samples 10 clients a round,
FedAsync and FedBuff keep 10 clients in flight and record a row every 10 updates (FedBuff K = 5; FedAsync with the
paper's polynomial staleness a = 0.5, alpha = 0.6). The table gives, over `--seeds`, the final and best test
accuracy, the simulated time and the rows to the target, and the mean staleness; `--out` gets the accuracy-against-
simulated-time plot (`fedsim.compare.plots.plot_accuracy_vs_time`) and every run folder.

    python bench/reproduce_async.py --seeds 0 1 2 --out outputs/reproduce_async
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

COMMON = ["num_clients=20", "partition=dirichlet", "partition.alpha=0.5", "client.local_epochs=1",
          "devices.model=lognormal", "devices.speed_spread=1.0", "devices.bandwidth_spread=1.0",
          "fraction_evaluate=0.0", "progress=false"]
RUNNERS = {
    "fedavg (sync, 10/round)": ["strategy=fedavg", "fraction_train=0.5"],
    "fedasync (C=10)": ["strategy=fedasync", "strategy.concurrency=10"],
    "fedbuff (C=10, K=5)": ["strategy=fedbuff", "strategy.concurrency=10", "strategy.buffer_size=5"],
}


def _mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", type=int, default=40)
    parser.add_argument("--target", type=float, default=0.85)
    parser.add_argument("--out", type=Path, default=Path("outputs/reproduce_async"))
    args = parser.parse_args()

    from fedsim.compare.plots import plot_accuracy_vs_time
    from fedsim.compare.table import load_run
    from fedsim.config import compose_experiment
    from fedsim.run import run_experiment

    runs: dict[str, list] = {}
    print(f"| strategy | final acc. | best acc. | sim. seconds to {args.target:g} | rows to {args.target:g} | "
          "mean staleness | n reached |")
    print("|---|---|---|---|---|---|---|")
    for name, overrides in RUNNERS.items():
        metrics, staleness = [], []
        for seed in args.seeds:
            folder = args.out / f"{name.split()[0]}_seed{seed}"
            if not (folder / "summary.json").exists():
                run_experiment(compose_experiment([*COMMON, *overrides, f"num_rounds={args.rows}", f"seed={seed}"]),
                               folder, show_progress=False)
            metrics.append(load_run(folder, args.target))
            with open(folder / "metrics.csv", newline="") as stream:
                rows = [row for row in csv.DictReader(stream) if int(row["round"]) > 0]
            staleness += [float(row["staleness_mean"]) for row in rows if row.get("staleness_mean")]
        runs[name] = metrics
        reached = [m for m in metrics if m.time_to_target is not None]
        print(f"| {name} | {_mean_std([m.final_accuracy for m in metrics])} | "
              f"{_mean_std([m.best_accuracy for m in metrics])} | "
              f"{_mean_std([m.time_to_target for m in reached])} | "
              f"{_mean_std([float(m.rounds_to_target) for m in reached])} | "
              f"{statistics.mean(staleness) if staleness else 0.0:.2f} | {len(reached)}/{len(metrics)} |", flush=True)
    plot = args.out / "accuracy_vs_time.png"
    plot_accuracy_vs_time({"digits, 20 lognormal devices": runs}, list(RUNNERS), plot, target=args.target)
    print(f"\nplot: {plot}")


if __name__ == "__main__":
    main()
