"""Reliability figures for docs/reliability.md: bad configs refused, malformed replies rejected, faults survived.

1. every bad config of `fedsim.testing.refused_configs` through `validate`: refused with one line naming the key?
2. every strategy's first round on 4 clients, each reply malformed in each of 13 ways: how many the server
   rejected, and whether the aggregated global model stayed finite and of the model's shapes;
3. end-to-end runs (digits, 10 clients, 20 rounds, FedAvg) with injected crashes / NaN replies: rounds completed,
   failures and rejections counted, final accuracy against the run without faults;
4. per strategy, a run (4 clients, 6 rounds, half sampled) killed with SIGKILL at a random round and resumed with
   `fedsim resume`: does every row of metrics.csv match the uninterrupted run?

    python bench/reliability.py [--strategies fedavg qffl ...] [--rounds 20]
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

import numpy as np
from flwr.supercore.task_identity import TaskIdentity

from fedsim.build import traits_of
from fedsim.checkpoint import load_checkpoint
from fedsim.config import compose_experiment, group_options, validate
from fedsim.errors import ConfigError
from fedsim.run import run_experiment
from fedsim.testing.crash import SLOW_CLIENTS, kill_during, untimed_metrics
from fedsim.testing.malformed import MALFORMATIONS, first_round, malformed
from fedsim.testing.refused_configs import BAD_VALUES

RESUME_BASE = ["num_clients=4", "num_rounds=6", "fraction_train=0.5", *SLOW_CLIENTS, "progress=false"]


def data_for(strategy: str) -> list[str]:
    """A small data set with a sensitive attribute for a strategy that declares it needs one (FairFed)."""
    needs = traits_of(compose_experiment([f"strategy={strategy}"])).requires_sensitive_attribute
    return ["dataset=fair_synthetic", "dataset.num_samples=400", "model=logreg"] if needs else []


def bad_configs() -> None:
    refused = named = 0
    for overrides, key in BAD_VALUES:
        try:
            validate(compose_experiment(overrides))
        except ConfigError as error:
            refused += 1
            named += error.key == key and "\n" not in str(error)
    print("| bad configs tried | refused | one line naming the key |\n|---|---|---|\n"
          f"| {len(BAD_VALUES)} | {refused} | {named} |\n")


def malformed_replies(strategies: list[str]) -> None:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    print("| strategy | malformed replies sent | rejected | valid replies sent | accepted "
          "| global model finite, right shapes |")
    print("|---|---|---|---|---|---|")
    for name in strategies:
        strategy, grid, arrays, replies, sent = first_round(name, *data_for(name))
        bad_sent = bad_rejected = good_sent = good_accepted = 0
        healthy = True
        for how in [m for m in MALFORMATIONS if m != "none"]:
            for victim in range(len(replies)):  # one malformed reply among valid ones
                plan = ["none"] * len(replies)
                plan[victim] = how
                checked = grid.check_replies([malformed(r, p) for r, p in zip(replies, plan, strict=True)], sent)
                grid.take_round_log()
                for reply, p in zip(checked, plan, strict=True):
                    if p == "none":
                        good_sent += 1
                        good_accepted += not reply.has_error()
                    else:
                        bad_sent += 1
                        bad_rejected += reply.has_error()
                new, _ = strategy.aggregate_train(1, checked)
                healthy &= new is not None and all(
                    np.isfinite(a.numpy()).all() and a.shape == arrays[k].shape and a.dtype == arrays[k].dtype
                    for k, a in new.items())
        print(f"| {name} | {bad_sent} | {bad_rejected} | {good_sent} | {good_accepted} "
              f"| {'yes' if healthy else 'NO'} |")
    print()


def faults(rounds: int) -> None:
    print("| faults | rounds completed | failures | rejected | skipped rounds | final accuracy |")
    print("|---|---|---|---|---|---|")
    root = Path(tempfile.mkdtemp(prefix="reliability_"))
    for label, extra in [("none", []), ("crash 10%", ["faults.crash_rate=0.1"]),
                         ("crash 30%", ["faults.crash_rate=0.3"]),
                         ("NaN 10%", ["faults.nan_rate=0.1"]), ("NaN 30%", ["faults.nan_rate=0.3"]),
                         ("crash 20% + NaN 20%", ["faults.crash_rate=0.2", "faults.nan_rate=0.2"]),
                         ("NaN 100%", ["faults.nan_rate=1.0"])]:
        folder = root / label.replace(" ", "_").replace("%", "")
        summary = run_experiment(compose_experiment([f"num_rounds={rounds}", "progress=false", *extra]), folder,
                                 show_progress=False)
        with open(folder / "metrics.csv", newline="") as stream:
            rows = list(csv.DictReader(stream))[1:]
        total = {key: sum(int(r[key]) for r in rows) for key in ("failures", "rejected", "skipped")}
        print(f"| {label} | {summary['rounds_completed']} | {total['failures']} | {total['rejected']} | "
              f"{total['skipped']} | {summary['final_accuracy']:.4f} |")
    print()


def kill_and_resume(strategies: list[str]) -> None:
    import random
    import subprocess

    print("| strategy | killed after round | resumed from checkpoint of round | every metrics row matches "
          "| final accuracy |")
    print("|---|---|---|---|---|")
    root = Path(tempfile.mkdtemp(prefix="resume_"))
    for name in strategies:
        overrides = [*RESUME_BASE, f"strategy={name}", *data_for(name)]
        reference = run_experiment(compose_experiment(overrides), root / f"{name}_reference", show_progress=False)
        at_round = random.Random(name).randint(1, 4)
        killed = root / f"{name}_killed"
        kill_during(killed, overrides, at_round)
        checkpoint_round = load_checkpoint(killed).server_round
        subprocess.run([sys.executable, "-m", "fedsim.cli", "resume", str(killed)], check=True, capture_output=True)
        same = untimed_metrics(killed) == untimed_metrics(root / f"{name}_reference")
        print(f"| {name} | {at_round} | {checkpoint_round} | {'yes' if same else 'NO'} | "
              f"{reference['final_accuracy']:.4f} |")
    print()


def main() -> None:
    import logging

    logging.getLogger("fedsim").setLevel(logging.ERROR)  # one warning per rejected reply otherwise
    logging.getLogger("flwr").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", nargs="+", default=group_options("strategy"))
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    bad_configs()
    malformed_replies(args.strategies)
    faults(args.rounds)
    kill_and_resume(args.strategies)


if __name__ == "__main__":
    main()
