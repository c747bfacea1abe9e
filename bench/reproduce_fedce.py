"""Collaboration fairness of FedCE on `digits` (Jiang et al., CVPR 2023, Table 2's metric): the Pearson correlation
between FedCE's client weights and leave-one-out contributions (accuracy of the full run minus the run without the
client; by default the mean over every client's held-out split, as the paper averages the sites' test sets), over
seeds, in settings with one "special" client (client 0):

- noisy features: an IID partition where every input of client 0 (training and validation) carries Gaussian noise
  of std 1.0 (`--noise-std`; pixels are in [0, 1]): a site with a noisier scanner, like the paper's domain-shifted
  sites;
- noisy labels: an IID partition where 80% of client 0's training labels are redrawn at random (validation clean);
- unique classes: client 0 holds every sample of classes 8 and 9 (nobody else has them) plus an IID share of the
  rest;
- dirichlet: the default Dirichlet(0.5) label skew, no special client, for reference.

6 clients as in the paper, 10 rounds, fedsim's default local work (3 epochs of SGD lr 0.1, momentum 0.9), MLP.

    python bench/reproduce_fedce.py --seeds 0 1 2 [--reference clients|test] [--markdown table.md]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.config import compose_experiment
from fedsim.contribution import run_contribution
from fedsim.partitions.base import PrecomputedPartitioner

BASE = ["dataset=digits", "num_clients=6", "model=mlp", "num_rounds=10", "strategy=fedce", "progress=false"]
SPECIAL_CLASSES = [8, 9]


class UniqueClassesPartitioner(PrecomputedPartitioner):
    """Partition 0 gets every row of `special_classes`; all other rows are shuffled and split equally over all
    partitions (partition 0 included)."""

    def __init__(self, num_partitions: int, special_classes: list[int], seed: int, partition_by: str = "label") -> None:
        super().__init__(num_partitions)
        self.special_classes, self.seed, self.partition_by = list(special_classes), seed, partition_by

    def _compute_partition_indices(self) -> list[np.ndarray]:
        labels = np.asarray(self.dataset[self.partition_by])
        special = np.isin(labels, self.special_classes)
        rest = np.random.default_rng(self.seed).permutation(np.flatnonzero(~special))
        parts = [np.sort(part) for part in np.array_split(rest, self.num_partitions)]
        parts[0] = np.sort(np.concatenate([parts[0], np.flatnonzero(special)]))
        return parts


SETTINGS = ("noisy features", "noisy labels", "unique classes", "dirichlet")


def experiment_for(setting: str, seed: int, noise_std: float = 1.0, extra: list[str] | None = None) -> dict[str, Any]:
    base = [*BASE, *(extra or []), f"seed={seed}"]
    if setting == "noisy features":
        return compose_experiment([*base, "partition=iid", "feature_noise.clients=[0]",
                                   f"feature_noise.std={noise_std}"])
    if setting == "noisy labels":
        return compose_experiment([*base, "partition=iid", "label_noise.clients=[0]", "label_noise.rate=0.8"])
    experiment = compose_experiment([*base, "partition=iid" if setting == "unique classes" else "partition=dirichlet"])
    if setting == "unique classes":
        experiment["partition"] = {"_target_": f"{__name__}.UniqueClassesPartitioner", "num_partitions": 6,
                                   "special_classes": SPECIAL_CLASSES, "seed": seed}
    return experiment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--reference", default="clients", choices=("clients", "test"),
                        help="accuracy the LOO difference is taken on: mean over clients' held-out splits, "
                             "or the test split")
    parser.add_argument("--noise-std", type=float, default=1.0, help="std of client 0's input noise (noisy features)")
    parser.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for every run")
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="fedce_"))
    measure = "mean client acc" if args.reference == "clients" else "test acc"
    lines = [f"| setting | seed | full run: {measure} | Pearson r (final weight) | r (mean weight) "
             "| client 0: FedCE weight (rank of 6) | client 0: LOO |",
             "|---|---|---|---|---|---|---|"]
    summary: dict[str, list[float]] = {}
    for setting in args.settings:
        for seed in args.seeds:
            started = time.perf_counter()
            experiment = experiment_for(setting, seed, args.noise_std, args.override)
            report = run_contribution(experiment, root / f"{setting.replace(' ', '_')}_{seed}",
                                      reference=args.reference)
            weights = [c["fedce_weight"] for c in report["clients"]]
            rank = 1 + sorted(weights, reverse=True).index(weights[0])
            r, r_mean = report["pearson"]["final_weight"], report["pearson"]["mean_weight"]
            summary.setdefault(setting, []).append(float("nan") if r is None else r)
            lines.append(f"| {setting} | {seed} | {report['full_accuracy']:.4f} | {_fmt(r)} | {_fmt(r_mean)} | "
                         f"{weights[0]:.3f} ({rank}) | {report['clients'][0]['loo_contribution']:+.4f} |")
            print(lines[-1], f"({time.perf_counter() - started:.0f} s)", flush=True)
    for setting, values in summary.items():
        lines.append(f"| **{setting}: mean r** | | | **{statistics.mean(values):+.3f}** | | | |")
    table = "\n".join(lines)
    print(f"\n{table}")
    if args.markdown:
        args.markdown.write_text(table + "\n")


def _fmt(value: float | None) -> str:
    return "undefined" if value is None else f"{value:+.3f}"


if __name__ == "__main__":
    main()
