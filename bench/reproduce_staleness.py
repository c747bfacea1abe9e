"""Wang & Gao's intertwined heterogeneity on `digits` (arXiv 2309.13536, offline analogue of spec §14.5): the
clients of one digit are always `delay` rounds stale; what does each conversion of their stale updates make of it?

Setting (the reference's `fixed.py`, scaled to sklearn's digits): clients of one class each (client i holds digit
i mod K, `partition=classes_per_client` with one class: the reference's label-sorted MNIST blocks), E = 5 full-batch
local epochs of plain SGD (a batch above every client's row count, so a client's local training is exactly the
K = 5 GD steps the inversion simulates), an MLP with one hidden layer of 64, client lr 0.5, 100 rounds. The clients
of digit `--digit` start from the global model of `--delay` = 40 rounds ago (the initial model until round 41;
`strategy=unstale`). By default 10 clients, all training every round (`--clients 100 --fraction 0.1` is the
reference's 100 clients, 10% a round): every round then holds each digit once, so the final model's per-digit
accuracy is not at the mercy of which digits the last rounds happened to sample.

Conversions: none (no staleness, the upper bound), direct (w_t + Δ), discount (2^(−s/20)), dcasgd (λ = 4) and
inversion (the paper's; fedsim's drift switch, `--switches` adds `never`, `estimate` or `oracle`, the last also
measuring every conversion's error against the true unstale update). Metric: the final global model's test accuracy
on the stale digit, on the other digits and overall, mean ± std over seeds; the overall test accuracy averaged over
the last 10 rounds; the inversion's mean relative fit error and when it stopped.

    python bench/reproduce_staleness.py --quick             # one seed, 40 rounds, delay 10 (about a minute)
    python bench/reproduce_staleness.py                     # 3 seeds (about 16 minutes on 2 shared cores)
    python bench/reproduce_staleness.py --seeds 0 --conversions inversion --switches oracle estimate never
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fedsim.build import saved_model
from fedsim.config import compose_experiment, resolve_auto_values
from fedsim.data.federation import federation_for
from fedsim.run import run_experiment
from table_cells import mean_std  # bench/, on sys.path when a script runs

CONVERSIONS = ("none", "direct", "discount", "dcasgd", "inversion")


def setting(args: argparse.Namespace, seed: int) -> list[str]:
    return ["dataset=digits", "partition=classes_per_client", "partition.num_classes_per_partition=1",
            f"num_clients={args.clients}", f"fraction_train={args.fraction}", "fraction_evaluate=0",
            "client.val_fraction=0", f"client.local_epochs={args.epochs}", "client.batch_size=100000",
            f"client.lr={args.lr}", "model=mlp", f"model.hidden=[{','.join(map(str, args.hidden))}]",
            f"num_rounds={args.rounds}", f"seed={seed}", "device=cpu", "progress=false",
            "strategy=unstale", f"strategy.delay={args.delay}", f"strategy.gi_images={args.gi_images}",
            f"strategy.gi_iterations={args.gi_iterations}", f"strategy.gi_loss={args.gi_loss}"]


def stale_partitions(experiment: dict, digit: int) -> list[int]:
    """The clients whose training rows are mostly `digit`."""
    counts = federation_for(resolve_auto_values(experiment)).label_counts()
    return [int(k) for k in np.flatnonzero(counts.argmax(1) == digit) if counts[k].sum() > 0]


def run(args: argparse.Namespace, seed: int, conversion: str, switch: str, out: Path) -> dict[str, float]:
    base = compose_experiment(setting(args, seed))
    stale = stale_partitions(base, args.digit)
    overrides = [*setting(args, seed), f"strategy.stale_clients=[{','.join(map(str, stale))}]",
                 f"strategy.conversion={conversion}", f"strategy.switch={switch}"]
    experiment = compose_experiment(overrides)
    started = time.perf_counter()
    summary = run_experiment(experiment, out, show_progress=False)
    seconds = time.perf_counter() - started
    test = federation_for(resolve_auto_values(experiment)).data.test_arrays
    model = saved_model(out / "model.pt", experiment)
    with torch.no_grad():
        correct = (model(test.x).argmax(1) == test.y).float()
    with open(out / "metrics.csv", newline="") as stream:
        rows = [row for row in csv.DictReader(stream) if int(row["round"]) > 0]
    fits = [float(row["gi_fit_error"]) for row in rows if row.get("gi_fit_error")]
    switched = [int(row["round"]) for row in rows if row.get("gi_switched") and float(row["gi_switched"]) > 0]
    numbers = {"digit": float(correct[test.y == args.digit].mean()),
               "others": float(correct[test.y != args.digit].mean()), "overall": float(summary["final_accuracy"]),
               "last10": statistics.mean(float(row["test_accuracy"]) for row in rows[-10:]),
               "gi_used": sum(float(row.get("gi_used") or 0) for row in rows),
               "fit": statistics.mean(fits) if fits else float("nan"),
               "switch_round": float(switched[0]) if switched else float("nan"), "seconds": seconds}
    for kind in CONVERSIONS[1:]:  # switch=oracle: each conversion's error against the true unstale update
        errors = [float(row[f"oracle_{kind}_error"]) for row in rows if row.get(f"oracle_{kind}_error")]
        if errors:
            numbers[f"oracle_{kind}"] = statistics.mean(errors)
    return numbers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--delay", type=int, default=40)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--fraction", type=float, default=1.0, help="share of the clients sampled per round")
    parser.add_argument("--digit", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--hidden", type=int, nargs="+", default=[64])
    parser.add_argument("--gi-images", type=int, default=64)
    parser.add_argument("--gi-iterations", type=int, default=200)
    parser.add_argument("--gi-loss", default="cross_entropy", choices=("cross_entropy", "bce"))
    parser.add_argument("--conversions", nargs="+", default=list(CONVERSIONS), choices=CONVERSIONS)
    parser.add_argument("--switches", nargs="+", default=["drift"],
                        choices=("drift", "estimate", "oracle", "never"), help="switch rules run with inversion")
    parser.add_argument("--quick", action="store_true", help="1 seed, 40 rounds, delay 10, 50 GI iterations")
    parser.add_argument("--out", type=Path, default=None, help="folder for the run folders (default: temporary)")
    parser.add_argument("--json", type=Path, default=None, help="also write every run's numbers here")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.rounds, args.delay, args.gi_iterations = args.seeds[:1], 40, 10, 50
    torch.set_num_threads(1)  # the inversion's tiny ops: one thread beats two spinning on a shared machine
    root = args.out or Path(tempfile.mkdtemp(prefix="staleness_"))
    variants = [(c, "drift") for c in args.conversions if c != "inversion"]
    variants += [("inversion", s) for s in args.switches] if "inversion" in args.conversions else []
    results: dict[str, list[dict[str, float]]] = {}
    for seed in args.seeds:
        for conversion, switch in variants:
            name = conversion if conversion != "inversion" else f"inversion ({switch})"
            numbers = run(args, seed, conversion, switch, root / f"seed{seed}_{conversion}_{switch}")
            results.setdefault(name, []).append(numbers)
            print(f"seed {seed} {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in numbers.items()), flush=True)

    def cell(name: str, key: str, digits: int = 3) -> str:
        values = [r[key] for r in results[name] if not np.isnan(r[key])]
        if not values:
            return "–"
        return mean_std(values, digits) if len(values) > 1 else f"{values[0]:.{digits}f}"

    lines = [f"| conversion | digit {args.digit} test acc | other digits | overall test acc | overall, last 10 rounds "
             "| GI uses | GI fit error | GI stopped (round) | s / run |", "|---|---|---|---|---|---|---|---|---|"]
    for name in results:
        lines.append(f"| {name} | {cell(name, 'digit')} | {cell(name, 'others')} | {cell(name, 'overall')} | "
                     f"{cell(name, 'last10')} | {cell(name, 'gi_used', 0)} | {cell(name, 'fit')} | "
                     f"{cell(name, 'switch_round', 0)} | {cell(name, 'seconds', 0)} |")
    oracle = [name for name in results if "oracle_inversion" in results[name][0]]
    if oracle:
        lines += ["", "Relative L1 error ‖w_true − ŵ‖₁ / ‖w_true − w_t‖₁ of each conversion against the stale clients' "
                  "true unstale update (switch=oracle, rounds while GI ran):", "",
                  "| run | inversion | direct | discount | dcasgd |", "|---|---|---|---|---|"]
        for name in oracle:
            kinds = ("inversion", "direct", "discount", "dcasgd")
            lines.append(f"| {name} | " + " | ".join(cell(name, f"oracle_{kind}") for kind in kinds) + " |")
    print(f"\ndigits, {args.clients} one-class clients, digit {args.digit} stale by {args.delay} rounds, "
          f"{args.rounds} rounds, E = {args.epochs}, lr {args.lr}, MLP {args.hidden}, GI {args.gi_images} images "
          f"x {args.gi_iterations} iterations ({args.gi_loss}), seeds {args.seeds}; run folders in {root}\n")
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                        indent=1))


if __name__ == "__main__":
    main()
