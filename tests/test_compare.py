"""`fedsim compare`: grid expansion, fairness across strategies, the table's numbers, resuming, the report."""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml

from fedsim import cli
from fedsim.compare.grid import expand, share_proxy_set
from fedsim.compare.pipeline import plan, report
from fedsim.compare.sweep import is_complete, run_folder, run_sweep
from fedsim.compare.table import build_rows, load_run, markdown_table
from fedsim.config import compose_experiment, group_options, resolve_auto_values
from fedsim.data.federation import build_federation
from fedsim.errors import FedsimError
from fedsim.partition_report import HEATMAP_FILE, plot_heatmap
from fedsim.recorder import client_accuracy_stats

from .conftest import data_for, read_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --- fake run folders ---------------------------------------------------------------------------------------


def write_fake_run(folder: Path, curve: list[float], clients: list[float], round_seconds: float | list[float] = 0.5,
                   weights: list[float] | None = None, experiment: dict | None = None, final_loss: float = 0.5,
                   fairness: dict | None = None, seed: int | None = None, sim_times: list | None = None) -> None:
    """A run folder as the recorder leaves it: metrics.csv (round 0 = initial model), summary.json, config.yaml.
    `round_seconds`: one value for every trained round, or one per trained round; `sim_times`: the virtual clock's
    `sim_time` of every row (round 0 included), or None for a folder from before the clock."""
    folder.mkdir(parents=True, exist_ok=True)
    seconds = round_seconds if isinstance(round_seconds, list) else [round_seconds] * (len(curve) - 1)
    header = ["round", "test_accuracy", "test_loss", "round_seconds"] + [f"acc_client_{k}" for k in range(len(clients))]
    header += [f"weight_client_{k}" for k in range(len(weights or []))] + (["sim_time"] if sim_times else [])
    lines = [",".join(header)]
    for r, accuracy in enumerate(curve):
        row = [str(r), str(accuracy), str(final_loss + 0.1 * (len(curve) - 1 - r)), str(seconds[r - 1] if r else 9.0)]
        row += [str(c) for c in clients] + [str(w) if r else "" for w in (weights or [])]
        row += [str(sim_times[r])] if sim_times else []
        lines.append(",".join(row))
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    trained = curve[1:]
    summary = {
        "final_accuracy": curve[-1], "final_loss": final_loss, "best_accuracy": max(trained),
        "best_round": 1 + trained.index(max(trained)), "rounds_completed": len(curve) - 1,
        "client_accuracy": {**client_accuracy_stats(clients), "clients": len(clients)},
        "final_client_accuracy": {str(k): c for k, c in enumerate(clients)},
        "wall_seconds": 1.0, "complete": True, "seed": seed,
    }
    if fairness is not None:
        summary["fairness"] = fairness
    (folder / "summary.json").write_text(json.dumps(summary))
    if experiment is not None:
        (folder / "config.yaml").write_text(yaml.safe_dump(resolve_auto_values(experiment), sort_keys=False))


def fake_run(calls: list[Path], fairness: bool = False, clock: bool = False):  # type: ignore[no-untyped-def]
    """A stand-in for run_experiment that writes a small, deterministic run folder (and a partition heatmap);
    `fairness`: with the group-fairness summary of data that has a sensitive attribute; `clock`: with `sim_time`,
    rounds of 10 + 5 · (letters of the strategy's class name mod 3) + seed seconds (FedAvg 10 s, FedDisco 20 s)."""

    def run(experiment, folder, choices=None, show_progress=True, resume=False):  # type: ignore[no-untyped-def]
        calls.append(Path(folder))
        seed, name = int(experiment["seed"]), str(experiment["strategy"]["_target_"])
        shift = 0.05 * (len(name) % 3) + 0.01 * seed
        curve = [0.1, 0.5 + shift, 0.8 + shift]
        weights = [0.2, 0.3, 0.5] if seed % 2 == 0 else [0.5, 0.3, 0.2]
        groups = {"test_spd": 0.1 - shift, "test_eod": 0.2 - shift, "clients": {}} if fairness else None
        length = 10.0 + 5.0 * (len(name.rsplit(".", 1)[-1]) % 3) + seed
        write_fake_run(Path(folder), curve, [0.6 + shift, 0.9, 1.0], weights=weights, experiment=experiment, seed=seed,
                       final_loss=1.0 - curve[-1], fairness=groups,
                       sim_times=[length * r for r in range(len(curve))] if clock else None)
        plot_heatmap(np.array([[3, 1], [0, 4], [2, 2]]), Path(folder) / HEATMAP_FILE)
        return json.loads((Path(folder) / "summary.json").read_text())

    return run


# --- grid -----------------------------------------------------------------------------------------------------


def test_expand_makes_one_point_per_strategy_setting_and_seed():
    grid = expand(["strategy=fedavg,fedprox", "seed=0,1,2", "partition.alpha=0.1,1.0", "num_rounds=5"])
    assert len(grid.points) == 2 * 3 * 2
    assert grid.strategies == ["fedavg", "fedprox"] and grid.seeds == [0, 1, 2] and grid.fixed == ["num_rounds=5"]
    first = grid.points[0]
    assert (first.strategy, first.seed, first.setting_label) == ("fedavg", 0, "partition.alpha=0.1")
    assert str(first.folder) == "fedavg/partition.alpha=0.1/seed=0"
    assert set(first.overrides) == {"strategy=fedavg", "seed=0", "num_rounds=5", "partition.alpha=0.1"}
    # settings outermost, then seeds, then strategies: an interrupted sweep leaves whole comparisons
    assert [(p.strategy, p.seed) for p in grid.points[:4]] == [("fedavg", 0), ("fedprox", 0), ("fedavg", 1),
                                                                ("fedprox", 1)]
    assert len({p.folder for p in grid.points}) == len(grid.points)


def test_expand_understands_ranges_and_defaults():
    grid = expand(["seed=range(0,3)"])
    assert grid.strategies == ["fedavg"] and grid.seeds == [0, 1, 2] and grid.settings == [()]
    assert grid.points[0].setting_label == "default" and str(grid.points[0].folder) == "fedavg/default/seed=0"


def test_a_strategys_own_keys_reach_its_points():
    the_plan = plan(["strategy=flag", "seed=0,1", "strategy.update_scale=released", "num_clients=3"])
    assert [e["strategy"]["update_scale"] for e in the_plan.experiments] == ["released", "released"]
    with pytest.raises(FedsimError, match=r"^strategy fedavg: strategy\.update_scale is not a fedsim config key"):
        plan(["strategy=flag,fedavg", "strategy.update_scale=released"])  # FedAvg has no such key


def test_one_proxy_size_for_every_strategy_when_one_needs_a_proxy_set():
    grid = share_proxy_set(expand(["strategy=fedavg,fedlaw"]), {"fedavg": False, "fedlaw": True}, 200)
    assert all("server.proxy_size=200" in p.overrides for p in grid.points)
    assert "fedlaw" in grid.notes[0]
    without = share_proxy_set(expand(["strategy=fedavg,fedprox"]), {"fedavg": False, "fedprox": False}, 200)
    assert all("server.proxy_size=0" in p.overrides for p in without.points) and not without.notes
    chosen = share_proxy_set(expand(["strategy=fedavg,fedlaw", "server.proxy_size=50"]),
                             {"fedavg": False, "fedlaw": True}, 200)
    assert all(p.overrides.count("server.proxy_size=50") == 1 and "server.proxy_size=200" not in p.overrides
               for p in chosen.points)


# --- fairness -------------------------------------------------------------------------------------------------


@pytest.mark.slow  # every strategy's federation: 18 s
def test_every_strategy_of_a_seed_gets_the_same_partition_and_proxy_set():
    on_digits = [strategy for strategy in group_options("strategy") if not data_for(strategy)]  # FairFed: other data
    the_plan = plan([f"strategy={','.join(on_digits)}", "seed=0,1"])
    assert {e["server"]["proxy_size"] for e in the_plan.experiments} == {200}
    by_seed: dict[int, list] = {}
    for point, experiment in zip(the_plan.grid.points, the_plan.experiments, strict=True):
        federation = build_federation(experiment)
        splits = [row for k in range(federation.num_clients) for row in federation.client_rows(k)]  # train, val
        by_seed.setdefault(point.seed, []).append((federation.proxy_rows, splits))
    for federations in by_seed.values():
        proxy, splits = federations[0]
        for other_proxy, other_splits in federations[1:]:
            assert np.array_equal(proxy, other_proxy)
            assert all(np.array_equal(a, b) for a, b in zip(splits, other_splits, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(by_seed[0][0][1], by_seed[1][0][1], strict=True))


def test_without_a_shared_proxy_size_fedlaw_would_see_another_partition():
    """Why the grid sets server.proxy_size: `auto` carves 200 samples for FedLAW only."""
    fedavg = build_federation(resolve_auto_values(compose_experiment(["strategy=fedavg"])))
    fedlaw = build_federation(resolve_auto_values(compose_experiment(["strategy=fedlaw"])))
    assert len(fedavg.proxy_rows) == 0 and len(fedlaw.proxy_rows) == 200
    assert not all(np.array_equal(a, b) for a, b in zip(fedavg.client_indices, fedlaw.client_indices, strict=True))


def test_strategies_of_a_seed_start_from_the_same_model_and_sample_the_same_clients(tmp_path):
    """A real (tiny) sweep: the same initial model (round 0 evaluates it), partition and sampled clients per round."""
    the_plan = plan(["strategy=fedavg,feddisco,fedlaw", "seed=3", "num_rounds=3", "fraction_train=0.5",
                     "client.local_epochs=1", "progress=false"])
    run_sweep(the_plan.grid.points, the_plan.experiments, tmp_path, show_progress=False)
    folders = [run_folder(tmp_path, p) for p in the_plan.grid.points]
    metrics = [read_metrics(folder) for folder in folders]
    assert len({rows[0]["test_loss"] for rows in metrics}) == 1  # round 0 evaluates the initial model
    sampled = [[row["sampled"] for row in rows[1:]] for rows in metrics]
    assert sampled[0] == sampled[1] == sampled[2] and all(len(s.split()) == 5 for s in sampled[0])
    assert len(set(sampled[0])) > 1  # the sampler does draw different clients from round to round
    assert len({(folder / "partition.json").read_text() for folder in folders}) == 1


# --- table ------------------------------------------------------------------------------------------------------

T2 = 4.302652729749462  # Student's t, 97.5% quantile, 2 degrees of freedom (three seeds)


def test_table_states_means_with_t_intervals_paired_wins_and_rounds_to_target(tmp_path):
    # final accuracy by hand: A 0.80, 0.84, 0.88 -> mean 0.84, s = 0.04, half = t(2) * 0.04 / sqrt(3) = 0.0994.
    # B is A + 0.01 on every seed: the unpaired intervals overlap by far, but the paired difference is 0.010 ± 0.000,
    # so B's win is significant (no ≈). C is B ± 0.02 alternately: no better than B by pairs -> C vs B is a tie.
    finals = {"A": [0.80, 0.84, 0.88], "B": [0.81, 0.85, 0.89]}
    for name, values in finals.items():
        for seed, final in enumerate(values):
            write_fake_run(tmp_path / f"{name}{seed}", [0.1, 0.5, 0.6, 0.7, 0.75, 0.8, final], [0.5, 1.0],
                           round_seconds=[5.0, 1.0, 2.0, 3.0, 4.0, 100.0], final_loss=1.0 - final)
    runs = [(name, "s", seed, load_run(tmp_path / f"{name}{seed}", 0.85)) for name in finals for seed in range(3)]
    a, b = build_rows(runs)
    final_a, final_b = a.cells["final_accuracy"], b.cells["final_accuracy"]
    assert final_a.mean == pytest.approx(0.84) and final_a.std == pytest.approx(0.04)
    assert final_a.interval.half_width == pytest.approx(T2 * 0.04 / 3**0.5)
    assert final_a.text(3) == "0.840 ± 0.099"
    assert final_b.best and not final_b.tie and not final_a.best
    assert b.baseline == "A" and a.delta_text() == "baseline"
    assert b.delta.mean == pytest.approx(0.01) and b.delta.half_width == pytest.approx(0.0, abs=1e-9)
    assert b.delta_text() == "+0.010 ± 0.000 *"
    # mean of the last 5 rounds: (0.6 + 0.7 + 0.75 + 0.8 + final) / 5
    assert a.cells["last_k_accuracy"].by_seed[0] == pytest.approx((0.6 + 0.7 + 0.75 + 0.8 + 0.80) / 5) and a.last_k == 5
    # test loss 1 - final (lower is better): B; Jain of (0.5, 1.0) = 1.5² / (2 · 1.25) = 0.9, equal for both: a tie
    assert b.cells["final_loss"].mean == pytest.approx(0.15) and b.cells["final_loss"].best
    assert a.cells["jain"].mean == pytest.approx(0.9) and a.cells["jain"].best and a.cells["jain"].tie
    # rounds to 0.85: A only on seed 2 (round 6), B on seeds 1 and 2 -> fewer misses win
    assert a.cells["rounds_to_target"].by_seed == {2: 6.0} and a.cells["rounds_to_target"].missing == 2
    assert b.cells["rounds_to_target"].best
    # seconds per round: median of rounds 2..6 (1, 2, 3, 4, 100) = 3; round 1's 5 s warm-up is left out; never best
    assert a.cells["seconds_per_round"].mean == pytest.approx(3.0)
    assert not any(row.cells["seconds_per_round"].best for row in (a, b))
    text = markdown_table([a, b], 0.85)
    assert "| A | s | 3 | 0.840 ± 0.099 | baseline |" in text and "| **0.850 ± 0.099** | +0.010 ± 0.000 * |" in text
    assert "Student-t 95% confidence interval" in text and "mean acc, last 5 rounds" in text
    assert "|SPD|" not in text  # no sensitive attribute in these runs: no group-fairness column


def test_exact_ties_are_ties_and_one_seed_never_wins():
    from fedsim.compare.table import RunMetrics

    def metrics(final: float, rounds: int | None) -> RunMetrics:
        return RunMetrics(final, final, 0.5, 0.1, rounds, 1.0, [(0, 0.1), (1, final)], [0.5])

    # rounds to target 5 and 5 on both seeds: "5.0 ± 0.0" for both, both bold and both ≈
    rows = build_rows([("A", "x", 0, metrics(0.9, 5)), ("B", "x", 0, metrics(0.8, 5)),
                       ("A", "x", 1, metrics(0.91, 5)), ("B", "x", 1, metrics(0.7, 5))])
    rounds = [row.cells["rounds_to_target"] for row in rows]
    assert all(cell.best and cell.tie for cell in rounds) and rounds[0].text(1) == "5.0 ± 0.0"
    assert "**5.0 ± 0.0** ≈" in markdown_table(rows, 0.5)
    # a single seed: the best is bold but ≈, and there is no interval to show
    single = build_rows([("A", "y", 0, metrics(0.9, None)), ("B", "y", 0, metrics(0.3, None))])
    assert single[0].cells["final_accuracy"].best and single[0].cells["final_accuracy"].tie
    assert single[0].cells["final_accuracy"].text(3) == "0.900" and single[1].delta_text() == "-0.600"
    assert all(row.cells["rounds_to_target"].text(1) == "— (1/1 ✗)" for row in single)
    # a diverged run (test loss NaN) is never the best, and its std is NaN rather than an error
    diverged = metrics(0.1, None)
    diverged.final_loss = float("nan")
    finite = metrics(0.8, None)
    finite.final_loss = 0.9
    rows = build_rows([("A", "z", 0, diverged), ("B", "z", 0, finite), ("A", "z", 1, diverged), ("B", "z", 1, finite)])
    assert [row.cells["final_loss"].best for row in rows] == [False, True]
    assert math.isnan(rows[0].cells["final_loss"].std)


def test_paired_difference_sees_what_unpaired_intervals_miss():
    from fedsim.compare.stats import difference, mean_interval, paired_difference, welch_difference

    a, b = {0: 0.80, 1: 0.84, 2: 0.88}, {0: 0.82, 1: 0.865, 2: 0.91}
    paired = paired_difference(b, a)  # differences 0.02, 0.025, 0.03: mean 0.025, s 0.005, half 0.0124
    assert paired.mean == pytest.approx(0.025) and paired.half_width == pytest.approx(T2 * 0.005 / 3**0.5)
    assert paired.excludes_zero and difference(b, a) == paired
    welch = welch_difference(list(b.values()), list(a.values()))
    assert welch.half_width > welch.mean and not welch.excludes_zero  # unpaired, the seed spread hides it
    assert mean_interval([0.5]).half_width is None and paired_difference({0: 1.0}, {1: 1.0}) is None
    # a diverged run's loss (inf, NaN) has no interval rather than stopping the report
    assert mean_interval([0.5, float("inf"), 0.7]).half_width is None
    assert paired_difference({0: float("nan"), 1: 1.0}, {0: 1.0, 1: 2.0}).half_width is None
    assert welch_difference([float("inf"), 1.0], [1.0, 2.0]).half_width is None


def test_best_is_marked_within_each_setting_and_fairness_columns_appear_with_a_sensitive_attribute(tmp_path):
    for name, final, spd in (("A", 0.9, -0.30), ("B", 0.8, 0.05)):
        write_fake_run(tmp_path / name, [0.1, final], [0.5], fairness={"test_spd": spd, "test_eod": 0.1, "clients": {}})
    rows = build_rows([(name, "x", 0, load_run(tmp_path / name, 0.5)) for name in ("A", "B")])
    assert rows[0].cells["test_spd"].mean == pytest.approx(0.30)  # |SPD|: parity is 0 from either side
    assert rows[1].cells["test_spd"].best and rows[0].cells["final_accuracy"].best
    text = markdown_table(rows, 0.5)
    assert r"\|SPD\| (test)" in text and r"\|EOD\| (test)" in text and "statistical parity" in text
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len({len(re.split(r"(?<!\\)\|", line)) for line in table}) == 1  # escaped: every line has as many cells


def test_different_client_optimisers_are_flagged():
    from fedsim.compare.table import RunMetrics, rich_table

    metrics = RunMetrics(0.9, 0.9, 0.5, 0.1, None, 1.0, [(0, 0.1), (1, 0.9)], [0.5])
    optimizers = {("fedavg", "x"): "SGD lr=0.1 m=0.9 wd=0", ("qffl", "x"): "SGD lr=0.1 m=0 wd=0",
                  ("fedavg", "y"): "SGD lr=0.1 m=0.9 wd=0", ("fedprox", "y"): "SGD lr=0.1 m=0.9 wd=0"}
    rows = build_rows([(s, setting, 0, metrics) for s, setting in optimizers], optimizers)
    assert [row.optimizer_differs for row in rows] == [True, True, False, False]
    text = markdown_table(rows, 0.5)
    assert "| ⚠ SGD lr=0.1 m=0 wd=0 |" in text and "different client optimisers" in text
    assert "different client optimisers" in str(rich_table(rows, 0.5).caption)
    assert "different client optimisers" not in markdown_table(rows[2:], 0.5)


def test_setup_and_hyperparameters_are_read_from_the_composed_configs():
    from fedsim.compare.setup import hyperparameters, setup_table, strategy_table

    the_plan = plan(["strategy=fedavg,feddisco", "seed=0,1", "num_rounds=7"])
    setup = dict(setup_table(the_plan.experiments))
    assert setup["rounds"] == "7" and setup["clients"] == "10" and setup["local epochs"] == "3"
    assert setup["seeds"] == "0, 1 (n=2)" and setup["data set"].startswith("digits")
    assert setup["partition"] == ("dirichlet (partition_by=label, alpha=0.5, min_partition_size=10, "
                                  "self_balancing=False)")
    assert setup["client optimiser"] == (
        "SGD lr=0.1 m=0.9 wd=0 | SGD lr=0.1 m=0.9 wd=1e-05 (differs by strategy: see Strategies)")
    table = {s.strategy: s for s in strategy_table(the_plan.grid.strategies, the_plan.experiments,
                                                   [p.strategy for p in the_plan.grid.points])}
    assert table["feddisco"].hyperparameters == ["a=0.5, b=0.1, measure=kl, target=uniform, proximal_mu=0"]
    assert table["feddisco"].optimizers == ["SGD lr=0.1 m=0.9 wd=1e-05"] and table["feddisco"].sources == ["paper"]
    assert table["fedavg"].hyperparameters == ["—"] and table["fedavg"].optimizers == ["SGD lr=0.1 m=0.9 wd=0"]
    assert hyperparameters(compose_experiment(["strategy=fedprox", "stragglers.fraction=0.5"])) == (
        "proximal_mu=0.1, straggler_mode=partial")


# --- resuming ---------------------------------------------------------------------------------------------------


def test_rerunning_skips_finished_runs_and_redoes_partial_ones(tmp_path):
    the_plan = plan(["strategy=fedavg,fedprox", "seed=0,1"])
    points, experiments = the_plan.grid.points, the_plan.experiments
    calls: list[Path] = []
    first = run_sweep(points, experiments, tmp_path, run=fake_run(calls), show_progress=False)
    assert len(calls) == 4 and len(first.ran) == 4 and not first.skipped
    calls.clear()
    again = run_sweep(points, experiments, tmp_path, run=fake_run(calls), show_progress=False)
    assert calls == [] and len(again.skipped) == 4
    # one run interrupted (no summary yet, a stale file), one with an incomplete summary
    interrupted, incomplete = run_folder(tmp_path, points[1]), run_folder(tmp_path, points[2])
    (interrupted / "summary.json").unlink()
    (interrupted / "stale.txt").write_text("left by the killed run")
    summary = json.loads((incomplete / "summary.json").read_text())
    (incomplete / "summary.json").write_text(json.dumps({**summary, "complete": False}))
    resumed = run_sweep(points, experiments, tmp_path, run=fake_run(calls), show_progress=False)
    assert sorted(calls) == sorted([interrupted, incomplete]) and len(resumed.skipped) == 2
    assert not (interrupted / "stale.txt").exists()  # a partial folder is run again from scratch


def test_an_interrupted_run_with_a_checkpoint_continues_instead_of_starting_over(tmp_path):
    the_plan = plan(["strategy=fedavg", "seed=0", "num_rounds=3", "num_clients=3"])
    point, experiment = the_plan.grid.points[0], the_plan.experiments[0]
    run_sweep([point], [experiment], tmp_path, show_progress=False)
    folder = run_folder(tmp_path, point)
    finished = (folder / "metrics.csv").read_text()
    (folder / "summary.json").unlink()  # killed after its last checkpoint, before the summary
    calls: list[tuple] = []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        from fedsim.run import run_experiment

        return run_experiment(*args, **kwargs)

    run_sweep([point], [experiment], tmp_path, run=spy, show_progress=False)
    assert calls == [{"resume": True}]
    assert is_complete(folder, experiment)
    assert (folder / "metrics.csv").read_text().splitlines()[1:] == finished.splitlines()[1:]  # no round ran again


def _interrupted_with_broken_checkpoint(out: Path):  # type: ignore[no-untyped-def]
    """A grid point killed after a checkpoint whose file was then cut short (same config, no summary)."""
    import torch

    the_plan = plan(["seed=0", "num_rounds=3"])
    point, experiment = the_plan.grid.points[0], the_plan.experiments[0]
    run_sweep([point], [experiment], out, run=fake_run([]), show_progress=False)
    folder = run_folder(out, point)
    (folder / "summary.json").unlink()
    buffer = io.BytesIO()
    torch.save({"format": 2, "server_round": 2, "arrays": torch.zeros(4096)}, buffer)  # a torch.save file, cut in half
    (folder / "checkpoint.pt").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return point, experiment, folder


def test_a_truncated_checkpoint_reruns_its_point_from_scratch(tmp_path, caplog):
    point, experiment, folder = _interrupted_with_broken_checkpoint(tmp_path)
    calls: list[dict] = []
    inner = fake_run([])

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(kwargs)
        return inner(*args, **kwargs)

    with caplog.at_level("WARNING", logger="fedsim"):
        result = run_sweep([point], [experiment], tmp_path, run=spy, show_progress=False)
    assert calls == [{}] and result.ran == [point]  # not resumed: run again from nothing
    assert is_complete(folder, experiment) and not (folder / "checkpoint.pt").exists()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and str(folder) in warnings[0] and "from scratch" in warnings[0]


def test_a_checkpoint_the_run_itself_refuses_reruns_its_point_but_other_errors_stop_the_sweep(tmp_path, monkeypatch):
    """The run's own loader may find what the sweep's check did not."""
    import fedsim.checkpoint
    from fedsim.checkpoint import CheckpointError
    from fedsim.errors import FedsimError

    point, experiment, folder = _interrupted_with_broken_checkpoint(tmp_path)
    monkeypatch.setattr(fedsim.checkpoint, "load_checkpoint", lambda run_dir: None)  # the sweep's check passes
    calls: list[dict] = []

    def refuses(experiment, folder, choices=None, show_progress=True, resume=False):  # type: ignore[no-untyped-def]
        calls.append({"resume": resume})
        if resume:
            raise CheckpointError(f"{folder}/checkpoint.pt was written by another fedsim version")
        return fake_run([])(experiment, folder)

    run_sweep([point], [experiment], tmp_path, run=refuses, show_progress=False)
    assert calls == [{"resume": True}, {"resume": False}] and is_complete(folder, experiment)

    (folder / "summary.json").unlink()
    (folder / "checkpoint.pt").write_bytes(b"whatever")

    def fails(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise FedsimError("client 3 sent NaN weights")

    with pytest.raises(FedsimError, match="NaN"):
        run_sweep([point], [experiment], tmp_path, run=fails, show_progress=False)


def test_a_changed_config_is_not_a_finished_run(tmp_path):
    the_plan = plan(["seed=0", "num_rounds=3"])
    calls: list[Path] = []
    run_sweep(the_plan.grid.points, the_plan.experiments, tmp_path, run=fake_run(calls), show_progress=False)
    folder = run_folder(tmp_path, the_plan.grid.points[0])
    assert is_complete(folder, the_plan.experiments[0])
    assert not is_complete(folder, {**the_plan.experiments[0], "num_rounds": 4})


def test_a_bad_grid_point_fails_before_any_run(tmp_path, monkeypatch, capsys):
    calls: list[Path] = []
    monkeypatch.setattr("fedsim.run.run_experiment", fake_run(calls))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["compare", "strategy=fedavg,fedprox", "partition.alpha=0.5,-1", "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and calls == []
    assert "partition.alpha" in capsys.readouterr().err


# --- report -----------------------------------------------------------------------------------------------------


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs):  # type: ignore[no-untyped-def]
        if tag == "img":
            self.sources.append(dict(attrs).get("src") or "")


@pytest.fixture(scope="module")
def fake_compare(tmp_path_factory) -> Path:
    """`fedsim compare` through the CLI, with fake runs: the report of a 2 strategies × 2 settings × 2 seeds grid
    (built once for the module: every test here only reads it)."""
    return run_fake_compare(tmp_path_factory.mktemp("compare") / "cmp")


GRID = ["strategy=fedavg,feddisco", "seed=0,1", "partition.alpha=0.1,1.0", "num_rounds=2", "--target", "0.8"]


def run_fake_compare(out: Path, grid: list[str] = GRID, fairness: bool = False, clock: bool = False) -> Path:
    calls: list[Path] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("fedsim.run.run_experiment", fake_run(calls, fairness, clock))
        cli.main(["compare", *grid, "--no-progress", "--out", str(out)])
    assert calls
    return out


def test_cli_writes_tables_and_report_and_resumes(fake_compare, monkeypatch, capsys):
    out = fake_compare
    with open(out / "comparison.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [(r["strategy"], r["setting"]) for r in rows] == [
        ("fedavg", "partition.alpha=0.1"), ("feddisco", "partition.alpha=0.1"),
        ("fedavg", "partition.alpha=1.0"), ("feddisco", "partition.alpha=1.0")]
    # fake final accuracies of fedavg: 0.8 + 0.01 * seed -> 0.805, sample std 0.00707, t(1) = 12.706 -> ± 0.0635
    assert rows[0]["seeds"] == "0 1" and float(rows[0]["final_accuracy_std"]) == pytest.approx(0.01 / 2**0.5)
    assert float(rows[0]["final_accuracy_ci95"]) == pytest.approx(12.7062047 * 0.01 / 2**0.5 / 2**0.5)
    assert rows[1]["delta_baseline"] == "fedavg" and rows[1]["client_optimizer"] == "SGD lr=0.1 m=0.9 wd=1e-05"
    assert rows[1]["optimizer_differs"] == "1"  # FedDisco's paper sets weight decay 1e-5, FedAvg runs fedsim's 0
    assert "**" in (out / "comparison.md").read_text()
    calls: list[Path] = []
    monkeypatch.setattr("fedsim.run.run_experiment", fake_run(calls))
    cli.main(["compare", *GRID, "--no-progress", "--out", str(out)])
    assert calls == [] and "8 runs already finished" in capsys.readouterr().err


def test_report_images_are_embedded_pngs_and_the_setup_is_stated(fake_compare):
    text = (fake_compare / "report.html").read_text()
    parser = _Images()
    parser.feed(text)
    # curves, client distributions, weights, and one partition heatmap per setting
    assert len(parser.sources) == 5
    for source in parser.sources:
        assert source.startswith("data:image/png;base64,")
        data = base64.b64decode(source.split(",", 1)[1], validate=True)
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
    assert "fedsim compare strategy=fedavg,feddisco seed=0,1 partition.alpha=0.1,1.0" in text
    assert "_target_: fedsim.strategies.FedDisco" in text  # the composed configs
    assert '<table id="setup">' in text and "<th>local epochs</th><td>3</td>" in text
    assert "<td>a=0.5, b=0.1, measure=kl, target=uniform, proximal_mu=0</td>" in text  # FedDisco's hyper-parameters
    assert 'id="optimizer-warning"' in text and "Student-t 95% confidence interval" in text
    # runs without the virtual clock (sim_time): no time column, legend line or plot
    assert "simulated time" not in text and not (fake_compare / "plots" / "accuracy_vs_time.png").exists()


def test_weights_are_drawn_for_one_seed_and_box_plots_share_their_y_range(tmp_path):
    from fedsim.compare import plots as compare_plots
    from fedsim.compare.table import RunMetrics

    def metrics(seed: int, clients: list[float], weights: dict) -> RunMetrics:
        m = RunMetrics(0.9, 0.9, 0.5, 0.1, None, 1.0, [(0, 0.1), (1, 0.9)], clients, weights)
        m.seed = seed
        return m

    runs = {"x": {"A": [metrics(3, [0.9, 0.95], {1: {0: 0.2, 1: 0.8}}), metrics(4, [0.8], {1: {0: 0.8, 1: 0.2}})]},
            "y": {"A": [metrics(3, [0.2, 0.6], {}), metrics(4, [0.7], {})]}}
    limits = compare_plots.plot_client_distributions(runs, ["A"], tmp_path / "box.png")
    assert limits == [(pytest.approx(0.15), 1.02)] * 2  # the lowest client of any panel, minus a margin
    drawn = compare_plots.plot_weights(runs, ["A"], tmp_path / "w.png")
    assert drawn == [("A", "x", 3, [[0.2], [0.8]])]  # seed 3's weights, not the mean 0.5 of two partitions


def test_report_from_python(tmp_path):
    """`report` without the CLI, on whatever runs are finished (one of two here)."""
    the_plan = plan(["strategy=fedavg,fedprox", "seed=0"])
    calls: list[Path] = []
    run_sweep(the_plan.grid.points[:1], the_plan.experiments[:1], tmp_path, run=fake_run(calls), show_progress=False)
    rows, path = report(the_plan, tmp_path, 0.5, "fedsim compare strategy=fedavg,fedprox seed=0")
    assert [row.strategy for row in rows] == ["fedavg"] and "1 of 2 runs finished." in path.read_text()
    assert io.BytesIO((tmp_path / "plots" / "accuracy_curves.png").read_bytes()).read(8) == PNG_MAGIC


def test_two_sweeps_never_write_one_folder_at_once(tmp_path):
    fcntl = pytest.importorskip("fcntl")
    from fedsim.compare.sweep import LOCK_FILE
    from fedsim.errors import FedsimError

    the_plan = plan(["seed=0"])
    with open(tmp_path / LOCK_FILE, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(FedsimError, match="another fedsim compare"):
            run_sweep(the_plan.grid.points, the_plan.experiments, tmp_path, run=fake_run([]), show_progress=False)


def test_disparity_and_contribution_correlations_reach_the_table(tmp_path):
    folder = tmp_path / "fye"
    disparity = {"global": 0.2, "local": 0.3, "unique": 0.15, "redundant": 0.05, "masked": 0.15, "z_s": 0.1,
                 "yhat_s": 0.1, "accuracy": 0.8}
    write_fake_run(folder, [0.1, 0.8], [0.9, 0.8, 0.7, 0.6],
                   fairness={"test_spd": 0.1, "test_eod": 0.1, "clients": {}, "disparity": disparity})
    (folder / "config.yaml").write_text(yaml.safe_dump(
        {"label_noise": {"clients": [0, 1, 2, 3], "rate": 0.6, "profile": "linear"}}))
    metrics = (folder / "metrics.csv").read_text().splitlines()
    contribution, selected = [0.4, 0.3, 0.2, 0.1], [9, 7, 2, 3]
    metrics[0] += "," + ",".join([f"contribution_client_{k}" for k in range(4)] + [f"selected_client_{k}"
                                                                                     for k in range(4)])
    metrics = [metrics[0]] + [line + "," + ",".join(map(str, contribution + selected)) for line in metrics[1:]]
    (folder / "metrics.csv").write_text("\n".join(metrics) + "\n")

    run = load_run(folder, 0.5)
    assert (run.disparity_global, run.disparity_local, run.disparity_masked) == (0.2, 0.3, 0.15)
    assert run.corr_contribution_noise == pytest.approx(-1.0)  # noise 0, .2, .4, .6 against falling contributions
    assert run.corr_contribution_accuracy == pytest.approx(1.0)
    assert run.corr_contribution_selected == pytest.approx(float(np.corrcoef(contribution, selected)[0, 1]))
    text = markdown_table(build_rows([("fairequal", "x", 0, run)]), 0.5)
    assert "I(Z;Ŷ\\|S), bits" in text and "r(contribution, label noise)" in text and "-1.00" in text

    plain = tmp_path / "plain"
    write_fake_run(plain, [0.1, 0.8], [0.9, 0.8])
    assert load_run(plain, 0.5).corr_contribution_noise is None and load_run(plain, 0.5).disparity_global is None

    from fedsim.compare.plots import plot_disparity

    assert plot_disparity({"x": {"fairequal": [run], "fedavg": [load_run(plain, 0.5)]}}, ["fairequal", "fedavg"],
                          tmp_path / "disparity.png")
    assert (tmp_path / "disparity.png").read_bytes().startswith(PNG_MAGIC)
    assert not plot_disparity({"x": {"fedavg": [load_run(plain, 0.5)]}}, ["fedavg"], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
