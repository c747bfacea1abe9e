"""Collaboration fairness of FedCE on `digits` (Jiang et al., CVPR 2023, Table 2's metric): the Pearson correlation
between FedCE's client weights and leave-one-out contributions (test accuracy of the full run minus the run
without the client), over seeds, in settings with one "special" client (client 0):

- noisy: an IID partition where client 0's training labels are 80% redrawn at random (its validation rows clean);
- unique classes: client 0 holds every sample of classes 8 and 9 (nobody else has them) plus an IID share of the
  rest;
- dirichlet: the default Dirichlet(0.5) label skew, no special client, for reference.

6 clients as in the paper, 10 rounds, fedsim's default local work (3 epochs of SGD lr 0.1, momentum 0.9), MLP.

    python bench/reproduce_fedce.py --seeds 0 1 2 [--markdown table.md]
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


def experiment_for(setting: str, seed: int) -> dict[str, Any]:
    if setting == "noisy":
        return compose_experiment([*BASE, "partition=iid", "label_noise.clients=[0]", "label_noise.rate=0.8", f"seed={seed}"])
    experiment = compose_experiment([*BASE, "partition=iid" if setting == "unique classes" else "partition=dirichlet", f"seed={seed}"])
    if setting == "unique classes":
        experiment["partition"] = {"_target_": f"{__name__}.UniqueClassesPartitioner", "num_partitions": 6,
                                   "special_classes": SPECIAL_CLASSES, "seed": seed}
    return experiment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--settings", nargs="+", default=["noisy", "unique classes", "dirichlet"])
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="fedce_"))
    lines = ["| setting | seed | full test acc | Pearson r (final weight) | r (mean weight) | client 0: FedCE weight (rank of 6) | client 0: LOO |",
             "|---|---|---|---|---|---|---|"]
    summary: dict[str, list[float]] = {}
    for setting in args.settings:
        for seed in args.seeds:
            started = time.perf_counter()
            report = run_contribution(experiment_for(setting, seed), root / f"{setting.replace(' ', '_')}_{seed}")
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
