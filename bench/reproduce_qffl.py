"""q-FFL vs FedAvg: does q > 0 make client accuracies more uniform? (Li et al., ICLR 2020, Table 1's statistics.)

Setting (the paper's Synthetic experiment, shortened): FedProx's Synthetic(1, 1), one client per device (30, with
power-law sizes and device-specific models), 10 clients sampled per round, 1 local epoch of plain SGD (lr 0.01,
batch 10, no momentum: q-FFL's L = 1/lr needs plain SGD, and FedAvg gets the same local work), multinomial
logistic regression, 600 rounds (the paper runs 20,000). Client accuracy is the final global model's accuracy on
each client's held-out validation split (20% of its data). Prints mean ± std over seeds of the final test accuracy
and of the client statistics the paper reports (average, worst-10%, best-10%, variance), plus Jain's index.

q = 0 is q-FedAvg's update with no reweighting: a plain mean of the sampled local models. FedAvg weighs them by
n_k. The q = 0 row separates what equal weighting does from what q adds.

    python bench/reproduce_qffl.py --seeds 0 1 2 --jobs 2
"""

from __future__ import annotations

import argparse
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from fedsim.config import compose_experiment
from fedsim.run import run_experiment
from table_cells import mean_std  # bench/, on sys.path when a script runs

SETTING = [
    "dataset=synthetic", "dataset.alpha=1", "dataset.beta=1", "partition=natural", "num_clients=30", "model=logreg",
    "fraction_train=0.34", "num_rounds=600", "client.local_epochs=1", "client.batch_size=10", "client.lr=0.01",
    "client.momentum=0", "client.weight_decay=0", "fraction_evaluate=0",
]
VARIANTS = {
    "FedAvg": ["strategy=fedavg"],
    "q-FFL q=0": ["strategy=qffl", "strategy.q=0"],
    "q-FFL q=0.1": ["strategy=qffl", "strategy.q=0.1"],
    "q-FFL q=1": ["strategy=qffl", "strategy.q=1"],
}
COLUMNS = {"test": "final test acc.", "mean": "client acc. mean", "worst10": "worst 10%", "best10": "best 10%",
           "variance": "variance (acc. %²)", "jain": "Jain's index"}


def run(seed: int, variant: list[str], out: Path, extra: list[str]) -> dict[str, float]:
    experiment = compose_experiment([*SETTING, *extra, *variant, f"seed={seed}", "progress=false"])
    summary = run_experiment(experiment, out, show_progress=False)
    clients = summary["client_accuracy"]
    return {"test": summary["final_accuracy"], "mean": clients["mean"], "worst10": clients["worst10"],
            "best10": clients["best10"], "variance": (100 * clients["std"]) ** 2, "jain": clients["jain"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for every variant")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (each uses one core)")
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="qffl_"))
    jobs = [(seed, name) for seed in args.seeds for name in VARIANTS]
    with ProcessPoolExecutor(max_workers=args.jobs, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        futures = {job: pool.submit(run, job[0], VARIANTS[job[1]], root / f"{job[0]}_{job[1].replace(' ', '_')}",
                                    args.override)
                   for job in jobs}
        for (seed, name), future in futures.items():
            print(f"seed {seed} {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in future.result().items()), flush=True)
    results = {name: [futures[(seed, name)].result() for seed in args.seeds] for name in VARIANTS}

    def fmt(values: list[float], key: str) -> str:
        return mean_std(values, 0 if key == "variance" else 3)

    lines = ["| strategy | " + " | ".join(COLUMNS.values()) + " |", "|---|" + "---|" * len(COLUMNS)]
    for name, values in results.items():
        lines.append(f"| {name} | " + " | ".join(fmt([v[key] for v in values], key) for key in COLUMNS) + " |")
    table = "\n".join(lines)
    print(f"\nSynthetic(1, 1), 30 devices, 10 per round, 600 rounds, seeds {args.seeds}\n\n{table}")
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
