"""Reproduce FedProx's headline (Li et al., MLSys 2020, Fig. 1): Synthetic(1,1) with 90% stragglers.

Setting of the paper's run scripts: 30 devices, 10 sampled per round, E = 20 local epochs, batch 10, lr 0.01, plain
SGD, multinomial logistic regression, 200 rounds. FedAvg drops the stragglers; FedProx lets them do 1..E-1 epochs
and aggregates them, with mu = 0 and mu = 1. Prints a table (final and last-10-round test accuracy, and how much the
test loss jumps around: the std of its round-to-round changes over the second half) and writes it as Markdown.

    python bench/reproduce_fedprox.py                       # the full run (about 12 minutes per seed on 2 cores)
    python bench/reproduce_fedprox.py --rounds 40 --seeds 0  # a quick look
"""

from __future__ import annotations

import argparse
import csv
import itertools
import statistics
import tempfile
import time
from pathlib import Path

from fedsim.config import compose_experiment
from fedsim.run import run_experiment
from table_cells import mean_std  # bench/, on sys.path when a script runs

SETTING = [
    "dataset=synthetic", "dataset.alpha=1", "dataset.beta=1", "partition=natural", "num_clients=30", "model=logreg",
    "fraction_train=0.34", "client.local_epochs=20", "client.batch_size=10", "client.lr=0.01", "client.momentum=0",
    "client.weight_decay=0", "client.val_fraction=0", "fraction_evaluate=0", "stragglers.fraction=0.9",
]
VARIANTS = {
    "FedAvg (stragglers dropped)": ["strategy=fedavg"],
    "FedProx mu=0 (partial work)": ["strategy=fedprox", "strategy.proximal_mu=0"],
    "FedProx mu=1 (partial work)": ["strategy=fedprox", "strategy.proximal_mu=1"],
}


def loss_jumps(losses: list[float]) -> float:
    """Std of the round-to-round changes of the test loss over the second half of training."""
    half = losses[len(losses) // 2 :]
    return statistics.pstdev([b - a for a, b in itertools.pairwise(half)]) if len(half) > 2 else 0.0


def run(rounds: int, seed: int, variant: list[str], out: Path) -> dict[str, float]:
    experiment = compose_experiment([*SETTING, *variant, f"num_rounds={rounds}", f"seed={seed}", "progress=false"])
    started = time.perf_counter()
    summary = run_experiment(experiment, out, show_progress=False)
    with open(out / "metrics.csv", newline="") as stream:
        rows = [r for r in csv.DictReader(stream) if int(r["round"]) > 0]
    accuracies = [float(r["test_accuracy"]) for r in rows]
    losses = [float(r["test_loss"]) for r in rows]
    return {
        "final": summary["final_accuracy"],
        "last10": statistics.mean(accuracies[-10:]),
        "max_loss": max(losses[len(losses) // 2 :]),
        "jumps": loss_jumps(losses),
        "seconds": time.perf_counter() - started,
    }


def plot_curves(root: Path, seed: int, path: Path) -> None:
    """Test accuracy and loss per round of the three variants for one seed, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (accuracy_axis, loss_axis) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=110)
    for name, variant in VARIANTS.items():
        with open(root / _folder(seed, variant) / "metrics.csv", newline="") as stream:
            rows = [r for r in csv.DictReader(stream) if int(r["round"]) > 0]
        rounds = [int(r["round"]) for r in rows]
        accuracy_axis.plot(rounds, [float(r["test_accuracy"]) for r in rows], label=name, linewidth=1)
        loss_axis.plot(rounds, [float(r["test_loss"]) for r in rows], label=name, linewidth=1)
    accuracy_axis.set(xlabel="round", ylabel="test accuracy", title="Synthetic(1,1), 90% stragglers")
    loss_axis.set(xlabel="round", ylabel="test loss", yscale="log", title=f"seed {seed}")
    for axis in (accuracy_axis, loss_axis):
        axis.grid(alpha=0.3)
    accuracy_axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)


def _folder(seed: int, variant: list[str]) -> str:
    return f"seed{seed}_{variant[-1].replace('=', '').replace('.', '_')}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for the run folders (default: a temporary one)")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    parser.add_argument("--plot", type=Path, default=None, help="also plot the first seed's curves to this PNG")
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="fedprox_"))
    results: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    for seed in args.seeds:
        for name, variant in VARIANTS.items():
            folder = root / _folder(seed, variant)
            results[name].append(run(args.rounds, seed, variant, folder))
            print(f"seed {seed} {name}: {results[name][-1]}", flush=True)

    def cell(name: str, key: str, digits: int = 3) -> str:
        values = [r[key] for r in results[name]]
        return mean_std(values, digits) if len(values) > 1 else f"{values[0]:.{digits}f}"

    header = ("| variant | final test acc | mean acc, last 10 rounds | max test loss, 2nd half "
              "| test-loss jumps (std of Δ), 2nd half | s / run |")
    lines = [header, "|---|---|---|---|---|---|"]
    for name in VARIANTS:
        lines.append(f"| {name} | {cell(name, 'final')} | {cell(name, 'last10')} | {cell(name, 'max_loss')} | "
                     f"{cell(name, 'jumps')} | {cell(name, 'seconds', 0)} |")
    table = "\n".join(lines)
    print(f"\nSynthetic(1,1), 90% stragglers, {args.rounds} rounds, seeds {args.seeds}, run folders in {root}\n")
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    if args.plot:
        plot_curves(root, args.seeds[0], args.plot)


if __name__ == "__main__":
    main()
