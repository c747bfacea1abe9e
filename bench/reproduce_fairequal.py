"""Fair-yet-Equal's claims on `digits` (Lin et al., ICML 2023, offline): with clients of linearly increasing label
noise, the estimated contribution ψ falls with the noise (the reference reports strongly negative correlations),
cleaner clients are drawn more often in stage 2 (their reward), and even the noisiest clients' own models approach
the server model's accuracy (asymptotic equality), while the server model keeps up with FedAvg.

Per seed, `strategy=fairequal` and `strategy=fedavg` on the same federation: `num_clients` clients, an iid split,
client i's training labels redrawn at rate 0.9·i/(n−1) (`label_noise.profile=linear`, the reference's
`label_noise_different` with max_noise 0.9), E = 3 local epochs (the reference's command default), SGD lr 0.02 with
momentum 0.9 (the reference divides its data set's lr by 5 when n > 5: fedsim's digits lr 0.1 / 5), β and r as the
reference's stream runs. A client's
accuracy is that of its final own model (`models/client_<i>.pt`: the last server model it received) on the test
split.

    python bench/reproduce_fairequal.py --seeds 0 1 2 [--clients 20] [--rounds 80] [--explore-rounds 30] [--beta 50]
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
from fedsim.compare.table import contribution_correlations
from fedsim.config import compose_experiment, resolve_auto_values
from fedsim.data.federation import federation_for
from fedsim.run import run_experiment


def overrides(strategy: str, seed: int, clients: int, rounds: int, explore: int, beta: float | None) -> list[str]:
    extra = [f"strategy.explore_rounds={explore}"] if strategy == "fairequal" else []
    extra += [f"strategy.beta={beta}"] if strategy == "fairequal" and beta is not None else []
    return [*extra, "dataset=digits", "model=mlp", "partition=iid", f"num_clients={clients}", f"num_rounds={rounds}",
            f"label_noise.clients=[{','.join(map(str, range(clients)))}]", "label_noise.rate=0.9",
            "label_noise.profile=linear", "client.local_epochs=3", "client.lr=0.02", f"strategy={strategy}",
            f"seed={seed}", "progress=false"]


def own_model_accuracy(experiment: dict, run_dir: Path, clients: int) -> np.ndarray:
    """Each client's final own model on the test split."""
    experiment = resolve_auto_values(experiment)
    test = federation_for(experiment).data.test_arrays
    out = []
    for client in range(clients):
        model = saved_model(run_dir / "models" / f"client_{client}.pt", experiment)
        with torch.no_grad():
            out.append(float((model(test.x).argmax(1) == test.y).float().mean()))
    return np.array(out)


def run_seed(seed: int, args: argparse.Namespace, out: Path) -> dict:
    result: dict = {}
    for strategy in ("fedavg", "fairequal"):
        experiment = compose_experiment(overrides(strategy, seed, args.clients, args.rounds, args.explore_rounds,
                                                     args.beta))
        run_dir = out / f"seed{seed}_{strategy}"
        summary = run_experiment(experiment, run_dir, show_progress=False)
        result[strategy] = summary["final_accuracy"]
        if strategy == "fairequal":
            with open(run_dir / "metrics.csv", newline="") as stream:
                rows = list(csv.DictReader(stream))
            config = resolve_auto_values(experiment)
            result["corr"] = contribution_correlations(rows[-1], summary, config)
            result["stage1_rounds"] = sum(1 for row in rows if row.get("stage") and float(row["stage"]) == 1)
            own = own_model_accuracy(experiment, run_dir, args.clients)
            result["own"] = own.tolist()
            psi = [float(rows[-1][f"contribution_client_{k}"]) for k in range(args.clients)]
            result["corr"]["own_test"] = float(np.corrcoef(psi, own)[0, 1]) if np.ptp(own) > 0 else None
            result["selected"] = [float(rows[-1][f"selected_client_{k}"]) for k in range(args.clients)]
            result["psi"] = psi
    return result


def stat(values: list[float | None]) -> str:
    """Mean ± std over the seeds that have a value (a correlation is None where one side is constant)."""
    present = [float(v) for v in values if v is not None and np.isfinite(v)]
    if not present:
        return "—"
    shown = f"{statistics.fmean(present):.3f}" + (f" ± {statistics.stdev(present):.3f}" if len(present) > 1 else "")
    return shown + ("" if len(present) == len(values) else f" (n={len(present)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=80)
    parser.add_argument("--explore-rounds", type=int, default=0, help="stage-1 rounds (0: the Hotelling test ends "
                        "stage 1, as the reference's default)")
    parser.add_argument("--beta", type=float, default=None, help="softmax inverse temperature (default: the "
                        "strategy's, 150)")
    parser.add_argument("--out", type=Path, default=None, help="keep the run folders here")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="fairequal_"))
    started = time.perf_counter()
    results = []
    for seed in args.seeds:
        results.append(run_seed(seed, args, out))
        print(f"seed {seed} done ({time.perf_counter() - started:.0f} s)", flush=True)
    fifth = max(1, args.clients // 5)
    stage1 = f"{args.explore_rounds} stage-1 rounds" if args.explore_rounds else "stage 1 ended by the test"
    stage1 += f", beta {args.beta:g}" if args.beta is not None else ""
    print(f"\ndigits, {args.clients} clients, label noise 0 … 0.9 (linear), {args.rounds} rounds, {stage1}; mean ± "
          f"std over {len(results)} seeds\n")
    print("| measure | value |\n|---|---|")
    lines = [
        ("stage-1 rounds (Hotelling stop)", [r["stage1_rounds"] for r in results]),
        ("r(ψ, label noise)", [r["corr"]["corr_contribution_noise"] for r in results]),
        ("r(ψ, times selected)", [r["corr"]["corr_contribution_selected"] for r in results]),
        ("r(ψ, own-model test acc)", [r["corr"]["own_test"] for r in results]),
        ("r(ψ, own-model validation acc)", [r["corr"]["corr_contribution_accuracy"] for r in results]),
        ("server test acc, FedAvg", [r["fedavg"] for r in results]),
        ("server test acc, fairequal", [r["fairequal"] for r in results]),
        (f"own-model test acc, {fifth} cleanest clients", [float(np.mean(r["own"][:fifth])) for r in results]),
        (f"own-model test acc, {fifth} noisiest clients", [float(np.mean(r["own"][-fifth:])) for r in results]),
        (f"times selected, {fifth} cleanest clients", [float(np.mean(r["selected"][:fifth])) for r in results]),
        (f"times selected, {fifth} noisiest clients", [float(np.mean(r["selected"][-fifth:])) for r in results]),
    ]
    for name, values in lines:
        print(f"| {name} | {stat(values)} |")
    print(f"\n{time.perf_counter() - started:.0f} s; run folders in {out}")
    (out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
