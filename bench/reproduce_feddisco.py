"""FedDisco vs FedAvg on a NIID-2-style partition of `digits` (Ye et al., ICML 2023, Table 1's NIID-2 setting).

NIID-2 (the FedDisco reference's shard rule): 6 clients; 5 hold two whole classes each, 1 holds one shard of every
class. FedDisco up-weights the uniform client. Local work follows the FedDisco scripts (SGD lr 0.01, momentum 0.9,
weight decay 1e-5, batch 64, 10 local epochs, full participation); 30 rounds of an MLP (the paper runs 100 rounds of
a CNN on CIFAR-10).
Prints mean ± std over seeds of the final accuracy and the mean accuracy over the last 5 rounds.

    python bench/reproduce_feddisco.py --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
from pathlib import Path

from fedsim.config import compose_experiment
from fedsim.run import run_experiment
from table_cells import mean_std  # bench/, on sys.path when a script runs

SETTING = [
    "dataset=digits", "partition=niid2", "num_clients=6", "model=mlp", "num_rounds=30", "client.local_epochs=10",
    "client.batch_size=64", "client.lr=0.01", "client.momentum=0.9", "client.weight_decay=1e-5",
]
VARIANTS = {"FedAvg": ["strategy=fedavg"], "FedDisco (a=0.5, b=0.1, KL)": ["strategy=feddisco"]}


def run(seed: int, variant: list[str], out: Path, extra: list[str]) -> tuple[float, float]:
    experiment = compose_experiment([*SETTING, *extra, *variant, f"seed={seed}", "progress=false"])
    summary = run_experiment(experiment, out, show_progress=False)
    with open(out / "metrics.csv", newline="") as stream:
        accuracies = [float(r["test_accuracy"]) for r in csv.DictReader(stream)]
    return summary["final_accuracy"], statistics.mean(accuracies[-5:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for both variants")
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="feddisco_"))
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
    for seed in args.seeds:
        for name, variant in VARIANTS.items():
            results[name].append(run(seed, variant, root / f"{seed}_{variant[0].split('=')[1]}", args.override))
            print(f"seed {seed} {name}: final {results[name][-1][0]:.4f}, "
                  f"last-5 mean {results[name][-1][1]:.4f}", flush=True)

    def fmt(values: list[float]) -> str:
        return mean_std(values, 4)

    lines = ["| strategy | final test accuracy | mean accuracy, last 5 rounds |", "|---|---|---|"]
    for name, values in results.items():
        lines.append(f"| {name} | {fmt([v[0] for v in values])} | {fmt([v[1] for v in values])} |")
    gains = [d[1] - a[1] for a, d in zip(results["FedAvg"], results["FedDisco (a=0.5, b=0.1, KL)"], strict=True)]
    lines.append(f"\nFedDisco − FedAvg (last-5 mean), per seed: {', '.join(f'{g:+.4f}' for g in gains)}")
    table = "\n".join(lines)
    print(f"\nNIID-2 on digits, seeds {args.seeds}\n\n{table}")
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
