"""Which kind of disparity each federation leaves (Hamman & Dutta, ICLR 2024, offline): FedAvg on `fair_synthetic`
under four splits, and the final model's disparity on the clients' validation rows decomposed into unique,
redundant and masked disparity (`fedsim.disparity`, the BROJA decomposition), mean ± std over seeds.

The paper's splits on Adult, with fair_synthetic in its place. As in the reference (a logistic regression on x
without Z), the features carry no trace of A (`dataset.leak=0`): Y depends on A, so a model reveals A only through
what it learns of Y.
- iid: every client has the same mix of A, so I(Z;S) = 0 and no disparity can be redundant: unique dominates;
- sensitive-attribute skew (the paper's "heterogeneity" split): clients differ in their share of A, so what the
  model reveals of A the client index reveals too: redundant dominates;
- label skew: clients differ in their share of Y (and, since Y depends on A, of A);
- synergy: even clients hold the rows with A = Y, odd ones A ≠ Y (`partition=synergy`, 1% swapped): inside a
  client the prediction reveals A exactly, globally it reveals nothing: masked dominates (local ≫ global).

    python bench/reproduce_pid.py --seeds 0 1 2 [--clients 2] [--rounds 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from fedsim.config import compose_experiment
from fedsim.run import run_experiment

SPLITS = {
    "iid": ["partition=iid"],
    "sensitive skew": ["partition=dirichlet", "partition.partition_by=sensitive", "partition.alpha=0.1"],
    "label skew": ["partition=dirichlet", "partition.partition_by=label", "partition.alpha=0.1"],
    "synergy": ["partition=synergy"],
}
TERMS = ("global", "local", "z_s", "unique", "redundant", "masked")


def run(split: list[str], seed: int, clients: int, rounds: int, folder: Path) -> dict[str, float]:
    overrides = ["dataset=fair_synthetic", "dataset.leak=0", "model=logreg", "strategy=fedavg",
                 f"num_clients={clients}", f"num_rounds={rounds}", "client.local_epochs=1", f"seed={seed}",
                 "progress=false", *split]
    summary = run_experiment(compose_experiment(overrides), folder, show_progress=False)
    return {**summary["fairness"]["disparity"], "test_accuracy": summary["final_accuracy"]}


def cell(values: list[float]) -> str:
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else \
        f"{values[0]:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--json", type=Path, help="also write every run's terms here")
    args = parser.parse_args()
    started = time.perf_counter()
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, split in SPLITS.items():
            for seed in args.seeds:
                folder = Path(scratch) / f"{name.replace(' ', '_')}_{seed}"
                results.setdefault(name, []).append(run(split, seed, args.clients, args.rounds, folder))
    print(f"FedAvg on fair_synthetic, {args.clients} clients, {args.rounds} rounds, seeds {args.seeds}: "
          "disparity of the final model in bits (mean ± std over seeds)\n")
    print("| split | test acc | I(Z;Ŷ) global | I(Z;Ŷ|S) local | I(Z;S) | unique | redundant | masked | largest |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, runs in results.items():
        means = {term: statistics.fmean(r[term] for r in runs) for term in ("unique", "redundant", "masked")}
        largest = max(means, key=means.get)
        cells = [cell([r["test_accuracy"] for r in runs])] + [cell([r[term] for r in runs]) for term in TERMS]
        print(f"| {name} | " + " | ".join(cells) + f" | {largest} |")
    print(f"\n{time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
