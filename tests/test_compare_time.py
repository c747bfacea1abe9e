"""`fedsim compare` on the virtual clock: time to target beside rounds to target, accuracy against simulated time, and
old run folders (no `sim_time`) shown without a time instead of with a wrong one."""

from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path

import numpy as np
import pytest

from fedsim.compare.clock import is_asynchronous, on_common_grid, simulated_times, time_to_target, time_unit
from fedsim.compare.plots import TIME_PLOT, plot_accuracy_vs_time
from fedsim.compare.report import write_report
from fedsim.compare.table import ASYNC_NOTE, build_rows, csv_table, legend, load_run, markdown_table, rich_table

from .test_compare import PNG_MAGIC, _Images, run_fake_compare, write_fake_run

T1 = 12.706204736174705  # Student's t, 97.5% quantile, 1 degree of freedom (two seeds)
CURVE = [0.1, 0.5, 0.7, 0.9, 0.95]
CLOCK = [0.0, 12.5, 30.0, 41.0, 60.0]


# --- reading the clock ------------------------------------------------------------------------------------------


def test_time_to_target_is_the_sim_time_of_the_first_round_that_reaches_it(tmp_path):
    write_fake_run(tmp_path / "run", CURVE, [0.5], sim_times=CLOCK)
    run = load_run(tmp_path / "run", 0.9)
    assert run.times == CLOCK and run.rounds_to_target == 3 and run.time_to_target == 41.0
    assert load_run(tmp_path / "run", 0.99).time_to_target is None  # never reached
    assert load_run(tmp_path / "run", 0.7).time_to_target == 30.0  # ≥, not >
    # round 0 (the initial model) never counts, as for rounds to target, even when it is already above the target
    assert load_run(tmp_path / "run", 0.05).time_to_target == 12.5
    curve = list(enumerate(CURVE))
    assert time_to_target(curve, CLOCK, 0.6) == 30.0 and time_to_target(curve, [], 0.6) is None


def test_a_run_without_a_usable_clock_has_no_time(tmp_path):
    write_fake_run(tmp_path / "old", CURVE, [0.5])  # before the column existed
    old = load_run(tmp_path / "old", 0.9)
    assert old.times == [] and old.time_to_target is None and old.rounds_to_target == 3
    write_fake_run(tmp_path / "zeros", CURVE, [0.5], sim_times=[0.0] * 5)  # a clock that never ran
    assert load_run(tmp_path / "zeros", 0.9).time_to_target is None
    rows = [{"round": str(r), "sim_time": t} for r, t in enumerate(["0.0", "", "3.0"])]
    assert simulated_times(rows) is None  # half known: not trusted
    assert simulated_times([{"sim_time": "0.0"}, {"sim_time": "nan"}]) is None
    assert simulated_times([{"sim_time": "0.0"}, {"sim_time": "2.5"}]) == [0.0, 2.5]
    assert simulated_times([]) is None


def test_one_unit_per_column_chosen_so_the_smallest_value_keeps_two_digits():
    assert time_unit([42.1, 300.0]) == ("s", 1.0)
    assert time_unit([192.0, 6000.0]) == ("min", 60.0)
    assert time_unit([5040.0, 9000.0]) == ("h", 3600.0)
    assert time_unit([None, math.nan, 0.0]) == ("s", 1.0)
    assert time_unit([42.1, 300.0], by="largest") == ("min", 60.0)  # an axis: its range


def test_seeds_step_curves_are_averaged_on_their_common_grid():
    # seed 0 ends rounds at 10 and 20 s, seed 1 at 15 and 30 s: the grid stops at 20 s, where seed 0 ends
    grid, values = on_common_grid([[(0.0, 0.1), (10.0, 0.5), (20.0, 0.8)], [(0.0, 0.2), (15.0, 0.6), (30.0, 0.9)]])
    assert grid.tolist() == [0.0, 10.0, 15.0, 20.0]
    assert values.tolist() == [[0.1, 0.5, 0.5, 0.8], [0.2, 0.2, 0.6, 0.6]]  # each holds until its next round ends


# --- the table --------------------------------------------------------------------------------------------------


def _two_strategies(tmp_path: Path, old: bool = False) -> list:
    """A reaches 0.9 at round 3 on both seeds, after 120 and 240 simulated seconds (short rounds); B at round 2 on
    seed 0 only, after 600 s (long rounds). `old`: B's folders have no clock."""
    runs = []
    for seed, step in enumerate((40.0, 80.0)):
        write_fake_run(tmp_path / f"A{seed}", [0.1, 0.5, 0.7, 0.9], [0.5], sim_times=[step * r for r in range(4)])
        runs.append(("A", "x", seed, load_run(tmp_path / f"A{seed}", 0.9)))
    for seed, curve in enumerate(([0.1, 0.6, 0.92, 0.95], [0.1, 0.6, 0.8, 0.85])):
        write_fake_run(tmp_path / f"B{seed}", curve, [0.5], sim_times=None if old else [300.0 * r for r in range(4)])
        runs.append(("B", "x", seed, load_run(tmp_path / f"B{seed}", 0.9)))
    return build_rows(runs)


def test_time_to_target_cells_in_one_unit_ranked_like_rounds_to_target(tmp_path):
    a, b = _two_strategies(tmp_path)
    time_a, time_b = a.cells["time_to_target"], b.cells["time_to_target"]
    assert time_a.by_seed == {0: 120.0, 1: 240.0} and time_b.by_seed == {0: 600.0} and time_b.missing == 1
    # smallest mean 180 s -> minutes for the whole column; half-width t(1) · s / √2 = 12.706 · 84.85 / 1.414 s
    assert time_a.unit == time_b.unit == "min"
    assert time_a.text(1) == f"3.0 ± {T1 * 1.0:.1f} min" and time_b.text(1) == "10.0 min (1/2 ✗)"
    # fewer misses first, as for rounds: A is best, and fewer rounds (B's round 2 on one seed) is not fewer seconds
    assert time_a.best and not time_b.best
    assert b.cells["rounds_to_target"].mean == 2.0 and a.cells["rounds_to_target"].mean == 3.0
    text = markdown_table([a, b], 0.9)
    assert "simulated time to target" in text and f"**3.0 ± {T1:.1f} min**" in text and "10.0 min (1/2 ✗)" in text
    assert "docs/devices.md" in text and "≥ 0.9" in text
    assert ASYNC_NOTE not in text  # no asynchronous strategy here
    assert "time→target" in [column.header for column in rich_table([a, b], 0.9).columns]
    rows = list(csv.DictReader(io.StringIO(csv_table([a, b]))))
    assert float(rows[0]["time_to_target_mean"]) == pytest.approx(180.0)  # raw seconds
    assert rows[0]["time_to_target_n"] == "2" and rows[0]["time_to_target_best"] == "1"
    assert rows[1]["time_to_target_not_reached"] == "1" and rows[1]["rounds_to_target_not_reached"] == "1"


def test_lower_time_wins_and_ties_follow_the_shown_precision(tmp_path):
    for seed in range(2):  # C: 3 rounds of 10 s; D: 2 rounds of 30 s -> fewer rounds, more time
        write_fake_run(tmp_path / f"C{seed}", [0.1, 0.5, 0.7, 0.9], [0.5], sim_times=[0.0, 10.0, 20.0, 30.0 + seed])
        write_fake_run(tmp_path / f"D{seed}", [0.1, 0.7, 0.9], [0.5], sim_times=[0.0, 30.0, 60.0 + seed])
    rows = build_rows([(name, "x", seed, load_run(tmp_path / f"{name}{seed}", 0.9))
                       for seed in range(2) for name in "CD"])
    c, d = rows
    assert d.cells["rounds_to_target"].best and not c.cells["rounds_to_target"].best
    assert c.cells["time_to_target"].best and not c.cells["time_to_target"].tie  # paired: 30 s less on both seeds
    assert c.cells["time_to_target"].text(1) == f"30.5 ± {T1 * 0.5:.1f} s"


def test_old_run_folders_show_no_time(tmp_path):
    a, b = _two_strategies(tmp_path, old=True)
    assert b.cells["time_to_target"].text(1) == "—" and b.cells["time_to_target"].missing == 0  # unknown, not ✗
    text = markdown_table([a, b], 0.9)
    assert f"| **3.0 ± {T1:.1f} min** |" in text and "| — |" in text  # A's cell is the only one, so the best
    # no clock at all: no column and no legend line
    only_old = [b]
    text = markdown_table(only_old, 0.9)
    assert "time to target" not in text and "docs/devices.md" not in text
    assert "time_to_target_mean" in csv_table(only_old)  # the csv's header stays stable
    assert not plot_accuracy_vs_time({"x": {"B": []}}, ["B"], tmp_path / "none.png")


def test_never_reaching_the_target_is_shown_when_there_is_a_clock(tmp_path):
    write_fake_run(tmp_path / "slow", [0.1, 0.3], [0.5], sim_times=[0.0, 5.0])
    rows = build_rows([("fedavg", "x", 0, load_run(tmp_path / "slow", 0.9))])
    assert rows[0].cells["time_to_target"].text(1) == "— (1/1 ✗)"
    assert "simulated time to target" in markdown_table(rows, 0.9)


def test_asynchronous_strategies_get_a_note_on_rows_and_time(tmp_path):
    assert is_asynchronous("fedasync") and is_asynchronous("FedBuff") and not is_asynchronous("fedavg")
    write_fake_run(tmp_path / "run", CURVE, [0.5], sim_times=CLOCK)
    run = load_run(tmp_path / "run", 0.9)
    rows = build_rows([("fedavg", "x", 0, run), ("fedasync", "x", 0, run)])
    assert ASYNC_NOTE in legend(rows, 0.9) and "`concurrency` client updates" in ASYNC_NOTE
    assert ASYNC_NOTE not in legend(rows[:1], 0.9)


# --- the plot and the report ------------------------------------------------------------------------------------


def test_accuracy_against_time_is_drawn_only_for_runs_with_a_clock(tmp_path):
    for seed in range(2):
        write_fake_run(tmp_path / f"A{seed}", CURVE, [0.5], sim_times=[t * (1 + seed) for t in CLOCK])
        write_fake_run(tmp_path / f"old{seed}", CURVE, [0.5])
    runs = {"x": {"A": [load_run(tmp_path / f"A{s}", 0.9) for s in range(2)],
                  "old": [load_run(tmp_path / f"old{s}", 0.9) for s in range(2)]}}
    assert plot_accuracy_vs_time(runs, ["A", "old"], tmp_path / TIME_PLOT, 0.9)
    assert (tmp_path / TIME_PLOT).read_bytes().startswith(PNG_MAGIC)
    assert not plot_accuracy_vs_time({"x": {"old": runs["x"]["old"]}}, ["old"], tmp_path / "none.png", 0.9)
    assert not (tmp_path / "none.png").exists()


def test_report_shows_the_time_column_and_plot_beside_the_round_plot(tmp_path):
    out = run_fake_compare(tmp_path / "cmp", ["strategy=fedavg,feddisco", "seed=1", "num_rounds=2", "--target", "0.8"],
                           clock=True)
    assert (out / "plots" / TIME_PLOT).read_bytes().startswith(PNG_MAGIC)
    text = (out / "report.html").read_text()
    parser = _Images()
    parser.feed(text)
    assert len(parser.sources) == 5  # curves, time, client distributions, weights, the partition heatmap
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", text)
    assert captions[0].startswith("global test accuracy per round")
    assert captions[1].startswith("global test accuracy against simulated time")
    assert "<th>simulated time to target</th>" in text and "docs/devices.md" in text
    # seed 1: FedAvg's rounds last 11 s, FedDisco's 21 s; both reach 0.8 at round 2 -> 22 and 42 s
    with open(out / "comparison.csv", newline="") as stream:
        table = {row["strategy"]: row for row in csv.DictReader(stream)}
    assert float(table["fedavg"]["time_to_target_mean"]) == pytest.approx(22.0)
    assert float(table["feddisco"]["time_to_target_mean"]) == pytest.approx(42.0)
    assert '<td class="num best tie"><span class="nb">22.0 s ≈</span></td>' in text  # one seed: every best is ≈
    assert '<td class="num"><span class="nb">42.0 s</span></td>' in text


def test_write_report_embeds_a_time_plot_it_is_given(tmp_path):
    write_fake_run(tmp_path / "run", CURVE, [0.5], sim_times=CLOCK)
    rows = build_rows([("fedavg", "x", 0, load_run(tmp_path / "run", 0.9))])
    plot_accuracy_vs_time({"x": {"fedavg": [load_run(tmp_path / "run", 0.9)]}}, ["fedavg"], tmp_path / TIME_PLOT, 0.9)
    path = write_report(tmp_path, "fedsim compare", rows, 0.9, [(tmp_path / TIME_PLOT, "against time")], {}, {})
    text = path.read_text()
    assert "41.0 s" in text and "against time" in text and np.isfinite(rows[0].cells["time_to_target"].mean)
