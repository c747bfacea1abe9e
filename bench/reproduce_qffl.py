"""q-FFL vs FedAvg: does q > 0 make client accuracies more uniform? (Li et al., ICLR 2020, Table 1's statistics.)

Setting: digits split over 20 clients by Dirichlet(0.3) label skew (unequal sizes and label mixes), 10 clients
sampled per round (as on Vehicle: 10 of 23), 1 local epoch of plain SGD (lr 0.1, batch 32, no momentum: q-FFL's
L = 1/lr needs plain SGD, and FedAvg gets the same local work), MLP, 60 rounds. Client accuracy is the final global
model's accuracy on each client's held-out validation split. Prints mean ± std over seeds of the final test
accuracy and of the client statistics the paper reports (average, worst-10%, best-10%, variance), plus Jain's index.

q = 0 is q-FedAvg's update with no reweighting: a plain mean of the sampled local models. FedAvg weighs them by n_k.

    python bench/reproduce_qffl.py --seeds 0 1 2 --markdown docs/_qffl.md
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from fedsim.config import compose_experiment
from fedsim.run import run_experiment

SETTING = [
    "dataset=digits", "partition=dirichlet", "partition.alpha=0.3", "num_clients=20", "fraction_train=0.5", "model=mlp",
    "num_rounds=60", "client.local_epochs=1", "client.lr=0.1", "client.momentum=0", "client.batch_size=32",
]
VARIANTS = {
    "FedAvg": ["strategy=fedavg"],
    "q-FFL q=0": ["strategy=qffl", "strategy.q=0"],
    "q-FFL q=1": ["strategy=qffl", "strategy.q=1"],
    "q-FFL q=5": ["strategy=qffl", "strategy.q=5"],
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
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="qffl_"))
    results: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    for seed in args.seeds:
        for name, variant in VARIANTS.items():
            results[name].append(run(seed, variant, root / f"{seed}_{name.replace(' ', '_')}", args.override))
            print(f"seed {seed} {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in results[name][-1].items()), flush=True)

    def fmt(values: list[float], key: str) -> str:
        digits = 0 if key == "variance" else 3
        return f"{statistics.mean(values):.{digits}f} ± {statistics.pstdev(values):.{digits}f}"

    lines = ["| strategy | " + " | ".join(COLUMNS.values()) + " |", "|---|" + "---|" * len(COLUMNS)]
    for name, values in results.items():
        lines.append(f"| {name} | " + " | ".join(fmt([v[key] for v in values], key) for key in COLUMNS) + " |")
    table = "\n".join(lines)
    print(f"\ndigits, Dirichlet(0.3) over 20 clients, 10 per round, seeds {args.seeds}\n\n{table}")
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
