"""FedAvg under label skew and under embedding skew at the same alpha (the comparison of Borazjani et al., 2025).

Both partitions run the same procedure (partition=embedding: clients are Dirichlet(alpha * p) mixtures of clusters,
sized by least squares); `partition.by=label` uses the labels as the clusters, `by=embedding` uses k-means clusters of
an embedding: the raw pixels (encoder pca) or, as in the paper, a task model's penultimate layer (encoder
model:<run folder>, here an MLP trained by FedAvg on an IID split first). Everything else is the main job (digits,
10 clients, MLP, 20 rounds of FedAvg). Prints mean ± std over seeds of the final test accuracy and loss, the mean
loss of the final model on the clients' own validation data, and the label JS divergence of the partition.

    python bench/label_vs_embedding_skew.py --alphas 0.1 0.5 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
from pathlib import Path

from fedsim.config import compose_experiment
from fedsim.run import run_experiment
from table_cells import mean_std  # bench/, on sys.path when a script runs


def run(overrides: list[str], out: Path) -> dict[str, float]:
    summary = run_experiment(compose_experiment([*overrides, "progress=false"]), out, show_progress=False)
    with open(out / "metrics.csv", newline="") as stream:
        last = list(csv.DictReader(stream))[-1]
    report = json.loads((out / "partition.json").read_text())
    return {
        "accuracy": float(summary["final_accuracy"]),
        "test_loss": float(last["test_loss"]),
        "client_loss": float(summary["client_loss"]["mean"]),
        "label_js": report["labels"]["summary"]["js_divergence"]["mean"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.1, 0.5])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="skew_"))
    task_model = root / "task_model"
    run(["partition=iid", "seed=0"], task_model)
    variants = {
        "label skew (by=label)": ["partition.by=label"],
        "embedding skew, pixels (encoder=pca)": ["partition.encoder=pca"],
        "embedding skew, task model (encoder=model:…)": [f"partition.encoder=model:{task_model}"],
    }
    lines = ["| alpha | partition | final test accuracy | final test loss | clients' loss (final model) "
             "| label JS div. |",
             "|---|---|---|---|---|---|"]
    for alpha in args.alphas:
        for name, extra in variants.items():
            results = []
            for seed in args.seeds:
                overrides = ["partition=embedding", f"partition.alpha={alpha}", f"seed={seed}", *extra]
                results.append(run(overrides, root / f"{alpha}_{len(results)}_{extra[0].split('=')[1][:5]}_{seed}"))
                print(f"alpha {alpha} {name} seed {seed}: {results[-1]}", flush=True)

            def fmt(key: str, results: list[dict[str, float]] = results) -> str:
                return mean_std([r[key] for r in results])

            lines.append(f"| {alpha} | {name} | {fmt('accuracy')} | {fmt('test_loss')} | {fmt('client_loss')} "
                         f"| {fmt('label_js')} |")
    table = "\n".join(lines)
    print(f"\ndigits, 10 clients, FedAvg, seeds {args.seeds}\n\n{table}")
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
