"""FairFed vs FedAvg on fair_synthetic with the sensitive attribute split by Dirichlet(alpha) (Ezzeldin et al.,
AAAI 2023, Table 2's setting: K = 5 clients, alpha = 0.1; the paper uses Adult and COMPAS, which need the internet).

Logistic regression, 20 rounds, full participation, fedsim's default local work (3 epochs, SGD lr 0.1, momentum
0.9, batch 32). Prints mean ± std over seeds of the final global model's test accuracy, |EOD| and |SPD|, and of
|EOD| and |SPD| averaged over the last 5 rounds (the test metrics swing from round to round under this skew).

beta is on declearn's scale (weights start at n_k; the default beta = 1 is declearn's). Rows marked beta_p use the
paper's scale (weights start at n_k / n): they run beta = beta_p * n, with n the clients' training rows of that seed.

    python bench/reproduce_fairfed.py --seeds 0 1 2 3 4 --markdown fairfed.md
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
from pathlib import Path

from fedsim.config import compose_experiment
from fedsim.data import build_federation
from fedsim.run import run_experiment
from table_cells import mean_std  # bench/, on sys.path when a script runs

SETTING = [
    "dataset=fair_synthetic", "partition=dirichlet", "partition.partition_by=sensitive", "partition.alpha=0.1",
    "num_clients=5", "model=logreg", "num_rounds=20",
]
PAPER_BETA = "paper-beta="  # a pseudo-override: strategy.beta = beta_p * n for this seed's n
VARIANTS = {
    "FedAvg": ["strategy=fedavg"],
    "FairFed (β=1, EOD)": ["strategy=fairfed", "strategy.beta=1.0", "strategy.metric=eod"],
    "FairFed (β_p=1, EOD)": ["strategy=fairfed", f"{PAPER_BETA}1", "strategy.metric=eod"],
    "FairFed (β_p=5, EOD)": ["strategy=fairfed", f"{PAPER_BETA}5", "strategy.metric=eod"],
    "FairFed (β_p=1, SPD)": ["strategy=fairfed", f"{PAPER_BETA}1", "strategy.metric=spd"],
    # The paper's FairFed runs on top of local debiasing; reweighing is its main choice (FairBatch the other).
    "FedAvg + local reweighing": ["strategy=fedavg", "client.local_debiasing=reweighing"],
    "FairFed (β=1, EOD) + local reweighing": ["strategy=fairfed", "strategy.beta=1.0",
                                              "client.local_debiasing=reweighing"],
    "FairFed (β_p=1, EOD) + local reweighing": ["strategy=fairfed", f"{PAPER_BETA}1",
                                                "client.local_debiasing=reweighing"],
    "FairFed (β_p=5, EOD) + local reweighing": ["strategy=fairfed", f"{PAPER_BETA}5",
                                                "client.local_debiasing=reweighing"],
}


def training_rows(overrides: list[str]) -> int:
    """n: the clients' training rows (what they report as num-examples) under these overrides."""
    federation = build_federation(compose_experiment(overrides))
    return sum(len(federation.client_rows(k)[0]) for k in range(federation.num_clients))


def run(seed: int, variant: list[str], out: Path, extra: list[str]) -> tuple[float, ...]:
    """(final accuracy, final |EOD|, final |SPD|, last-5-round mean |EOD|, last-5-round mean |SPD|)."""
    overrides = [*SETTING, *extra, f"seed={seed}", "progress=false"]
    paper = [float(item[len(PAPER_BETA):]) for item in variant if item.startswith(PAPER_BETA)]
    variant = [item for item in variant if not item.startswith(PAPER_BETA)]
    if paper:
        variant.append(f"strategy.beta={paper[0] * training_rows([*overrides, *variant])}")
    experiment = compose_experiment([*overrides, *variant])
    summary = run_experiment(experiment, out, show_progress=False)
    fairness = summary["fairness"]
    with open(out / "metrics.csv", newline="") as stream:
        last = list(csv.DictReader(stream))[-5:]
    eod5 = statistics.mean(abs(float(row["test_eod"])) for row in last)
    spd5 = statistics.mean(abs(float(row["test_spd"])) for row in last)
    return summary["final_accuracy"], abs(fairness["test_eod"]), abs(fairness["test_spd"]), eod5, spd5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for every variant")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="NAME",
                        help=f"which rows to run (default all): {'; '.join(VARIANTS)}")
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="fairfed_"))
    chosen = {name: VARIANTS[name] for name in args.variants}
    results: dict[str, list[tuple[float, ...]]] = {name: [] for name in chosen}
    for seed in args.seeds:
        for index, (name, variant) in enumerate(chosen.items()):
            results[name].append(run(seed, variant, root / f"{seed}_{index}", args.override))
            acc, eod, spd, eod5, spd5 = results[name][-1]
            print(f"seed {seed} {name}: accuracy {acc:.4f}, |EOD| {eod:.4f}, |SPD| {spd:.4f}, "
                  f"last-5 |EOD| {eod5:.4f}, |SPD| {spd5:.4f}", flush=True)

    def fmt(values: list[float]) -> str:
        return mean_std(values)

    lines = ["| strategy | final test accuracy | final \\|EOD\\| | final \\|SPD\\| | \\|EOD\\|, last 5 rounds "
             "| \\|SPD\\|, last 5 rounds |", "|---|---|---|---|---|---|"]
    for name, values in results.items():
        lines.append(f"| {name} | {' | '.join(fmt([v[i] for v in values]) for i in range(5))} |")
    table = "\n".join(lines)
    setting = "Dirichlet(0.1) over A, 5 clients" + (f", overrides: {' '.join(args.override)}" if args.override else "")
    print(f"\nfair_synthetic, {setting}, seeds {args.seeds}\n\n{table}")
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
