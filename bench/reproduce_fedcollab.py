"""FedCollab's label-shift claim on `digits` (Bao et al., ICML 2023, Table 1's FMNIST row, offline): with clustered
label groups and a group of tiny clients, the solver's coalitions recover the groups, and every client ends better
in its coalition than alone (IPR = 1), while FedAvg leaves some worse off (IPR < 1).

The federation is the reference's `cluster4_0.25` + `clusterexp`: clients in 4 label clusters, the second half
subsampled to exp(-decay) of their rows (`partition=label_clusters`). Per seed, three runs of `strategy=fedcollab`
that differ only in `strategy.coalitions`: alone (local training), together (FedAvg) and solved (FedCollab).
C = 1: the generalisation term is C/sqrt(rows), and digits' clients hold about 60 times fewer rows than the
reference's FMNIST clients, for which it uses C = 10.

A client's accuracy is that of its final model (`models/client_<i>.pt`) two ways: on the test split, each class
weighted by the client's label share (its expected accuracy on its own distribution; the reference tests on a
client test split drawn the same way), and on its own validation rows (a handful for the tiny clients). IPR = share
of clients with acc > acc alone (also given with ≥, since tiny validation sets tie); RSD = std over clients of
(acc − acc alone).

    python bench/reproduce_fedcollab.py --seeds 0 1 2 [--clients 20] [--rounds 30] [--decay 1.0] [--per-client]
"""

from __future__ import annotations

import argparse
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

MODES = ("alone", "together", "solved")


def base(seed: int, rounds: int, decay: float, val_fraction: float, c: float, clients: int) -> list[str]:
    return ["dataset=digits", "model=mlp", f"num_clients={clients}", "partition=label_clusters", "partition.k=0.25",
            f"partition.subsample_decay={decay}", f"num_rounds={rounds}", "client.local_epochs=1",
            f"client.val_fraction={val_fraction}", "strategy=fedcollab", f"strategy.c={c}", f"seed={seed}",
            "progress=false"]


def test_accuracy(experiment: dict, run_dir: Path) -> np.ndarray:
    """Each client's final model on the test split, weighted by the client's label distribution: its expected
    accuracy on its own distribution (the shift is in labels only), measured on all 360 test rows rather than on the
    client's handful of validation rows."""
    experiment = resolve_auto_values(experiment)
    federation = federation_for(experiment)
    data = federation.data
    test_x, test_y = data.test_arrays.x, data.test_arrays.y
    train_y = data.train_arrays.y
    out = []
    for client, rows in enumerate(federation.client_indices):
        model = saved_model(run_dir / "models" / f"client_{client}.pt", experiment)
        with torch.no_grad():
            correct = (model(test_x).argmax(dim=1) == test_y).float()
        per_class = np.array([float(correct[test_y == label].mean()) for label in range(data.num_classes)])
        share = np.bincount(train_y[torch.as_tensor(rows)].numpy(), minlength=data.num_classes) / len(rows)
        out.append(float(share @ per_class))
    return np.array(out)


def run_seed(seed: int, args: argparse.Namespace, out: Path) -> dict:
    accuracy, tested, found, seconds = {}, {}, {}, {}
    for mode in MODES:
        started = time.monotonic()
        experiment = compose_experiment([*base(seed, args.rounds, args.decay, args.val_fraction, args.c, args.clients),
                                         f"strategy.coalitions={mode}"])
        run_dir = out / f"seed{seed}_{mode}"
        run_experiment(experiment, run_dir, show_progress=False)
        summary = json.loads((run_dir / "summary.json").read_text())
        accuracy[mode] = np.array([summary["final_client_accuracy"][str(k)] for k in range(args.clients)])
        tested[mode] = test_accuracy(experiment, run_dir)
        found[mode] = json.loads((run_dir / "preparation.json").read_text())
        seconds[mode] = time.monotonic() - started
    result = {"coalitions": found["solved"]["coalitions"], "seconds": seconds, "accuracy": accuracy,
              "tested": tested}
    for name, measured in (("val", accuracy), ("test", tested)):
        alone = measured["alone"]
        result[name] = {"alone": {"acc": float(alone.mean())}}
        for mode in ("together", "solved"):
            gain = measured[mode] - alone
            result[name][mode] = {"acc": float(measured[mode].mean()), "ipr": float(np.mean(gain > 0)),
                                  "ipr_ties": float(np.mean(gain >= 0)), "rsd": float(np.std(gain))}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--clients", type=int, default=20, help="a multiple of 4 (four label clusters)")
    parser.add_argument("--decay", type=float, default=1.0)
    parser.add_argument("--val-fraction", type=float, default=0.5)
    parser.add_argument("--c", type=float, default=1.0, help="the objective's C (the reference: 10 on FMNIST, "
                        "whose clients hold ~60x more rows; C enters as C/sqrt(m))")
    parser.add_argument("--per-client", action="store_true", help="print every client's three accuracies")
    parser.add_argument("--out", type=Path, default=None, help="keep the run folders here")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="fedcollab_"))
    results = []
    for seed in args.seeds:
        result = run_seed(seed, args, out)
        results.append(result)
        print(f"seed {seed}: coalitions {result['coalitions']}; runs took "
              + ", ".join(f"{mode} {s:.0f} s" for mode, s in result["seconds"].items()), flush=True)
        if args.per_client:
            print("| client | alone (val) | FedAvg (val) | coalition (val) | alone (test) | FedAvg (test) "
                  "| coalition (test) |\n|---|---|---|---|---|---|---|")
            for k in range(args.clients):
                print(f"| {k} | " + " | ".join(f"{result[kind][m][k]:.3f}" for kind in ("accuracy", "tested")
                                             for m in MODES) + " |")

    for name, title in (("test", "on the test split, weighted by each client's label distribution"),
                        ("val", "on each client's validation rows")):
        def stat(mode: str, key: str, name: str = name) -> str:
            values = [r[name][mode][key] for r in results]
            return f"{statistics.mean(values):.3f} ± {statistics.pstdev(values):.3f}"

        print(f"\nclient accuracy {title}; {len(results)} seeds, mean ± std over seeds\n")
        print("| | Acc | IPR (acc > alone) | IPR (acc ≥ alone) | RSD |\n|---|---|---|---|---|")
        print(f"| alone (local) | {stat('alone', 'acc')} | | | |")
        for mode, label in (("together", "FedAvg"), ("solved", "FedCollab")):
            print(f"| {label} | {stat(mode, 'acc')} | {stat(mode, 'ipr')} | {stat(mode, 'ipr_ties')} | "
                  f"{stat(mode, 'rsd')} |")


if __name__ == "__main__":
    main()
