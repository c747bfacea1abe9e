"""`fedsim compare` on the bytes a run moves: traffic to target and in total beside rounds and simulated time, the
uplink ratio to the first strategy, accuracy against megabytes, old run folders (no byte columns) shown without
traffic, and an update encoding (`compression=...`) as part of a row's label rather than a setting."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest

from fedsim.compare import plots as compare_plots
from fedsim.compare.grid import expand, share_proxy_set, strategy_label
from fedsim.compare.pipeline import Plan, report
from fedsim.compare.plots import TRAFFIC_PLOT, plot_accuracy_vs_megabytes
from fedsim.compare.sweep import run_folder, run_sweep
from fedsim.compare.table import (
    ASYNC_NOTE,
    RATIO_NOTE,
    build_rows,
    csv_table,
    legend,
    load_run,
    markdown_table,
    rich_table,
    visible_columns,
)
from fedsim.compare.traffic import (
    cumulative_megabytes,
    mb_to_target,
    traffic_decimals,
    traffic_unit,
    uplink_bytes_per_round,
)
from fedsim.config import GROUPS, compose_experiment

from .test_compare import PNG_MAGIC, _Images, write_fake_run

T1 = 12.706204736174705  # Student's t, 97.5% quantile, 1 degree of freedom (two seeds)
DISCOVERY = (2000, 1000)  # round 0's bytes down and up: 0.003 MB


def add_traffic(folder: Path, down: float, up: float, discovery: tuple[float, float] = DISCOVERY) -> None:
    """Give a fake run's metrics.csv the recorder's byte columns: `down` and `up` bytes in every trained round,
    `discovery` in round 0, and their running totals."""
    with open(folder / "metrics.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    total_down = total_up = 0.0
    for row in rows:
        sent, received = discovery if row["round"] == "0" else (down, up)
        total_down, total_up = total_down + sent, total_up + received
        row.update(bytes_down=sent, bytes_up=received, total_bytes_down=total_down, total_bytes_up=total_up)
    with open(folder / "metrics.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def fake_run(folder: Path, curve: list[float], down: float | None = None, up: float | None = None,
             sim_times: list[float] | None = None) -> Path:
    write_fake_run(folder, curve, [0.5, 0.7], sim_times=sim_times)
    if down is not None and up is not None:
        add_traffic(folder, down, up)
    return folder


# --- reading the byte columns -----------------------------------------------------------------------------------


def test_cumulative_megabytes_and_traffic_to_target_from_the_rows():
    # round 0: discovery, 2000 B down + 1000 B up; rounds 1-3: 4 MB down + 1 MB up each
    rows = [{"round": str(r), "bytes_down": str(d), "bytes_up": str(u), "total_bytes_down": str(td),
             "total_bytes_up": str(tu)}
            for r, d, u, td, tu in [(0, 2000, 1000, 2000, 1000), (1, 4e6, 1e6, 4_002_000, 1_001_000),
                                    (2, 4e6, 1e6, 8_002_000, 2_001_000), (3, 4e6, 1e6, 12_002_000, 3_001_000)]]
    megabytes = cumulative_megabytes(rows)
    assert megabytes == pytest.approx([0.003, 5.003, 10.003, 15.003])
    assert uplink_bytes_per_round(rows) == 1e6  # round 0 carries no update
    curve = [(0, 0.95), (1, 0.5), (2, 0.9), (3, 0.97)]
    assert mb_to_target(curve, megabytes, 0.9) == pytest.approx(10.003)  # ≥, not >
    assert mb_to_target(curve, megabytes, 0.96) == pytest.approx(15.003)
    # round 0 (the initial model) never counts, as for rounds to target, even above the target
    assert mb_to_target(curve, megabytes, 0.3) == pytest.approx(5.003)
    assert mb_to_target(curve, megabytes, 0.99) is None and mb_to_target(curve, [], 0.3) is None


def test_a_run_without_usable_byte_counts_has_no_traffic():
    assert cumulative_megabytes([{"round": "0", "test_accuracy": "0.1"}]) is None  # before the columns existed
    assert cumulative_megabytes([]) is None and uplink_bytes_per_round([]) is None
    half = [{"round": "0", "total_bytes_down": "10", "total_bytes_up": "5", "bytes_up": "5"},
            {"round": "1", "total_bytes_down": "", "total_bytes_up": "9", "bytes_up": ""}]
    assert cumulative_megabytes(half) is None and uplink_bytes_per_round(half) is None  # half known: not trusted
    zeros = [{"round": str(r), "total_bytes_down": "0", "total_bytes_up": "0"} for r in range(3)]
    assert cumulative_megabytes(zeros) is None  # nothing was counted
    nan = [{"round": "0", "total_bytes_down": "nan", "total_bytes_up": "1"}]
    assert cumulative_megabytes(nan) is None
    assert uplink_bytes_per_round([{"round": "0", "bytes_up": "7"}]) is None  # no trained round


def test_one_unit_per_column_that_of_its_largest_value_with_decimals_for_its_smallest():
    assert traffic_unit([0.5, 20.0]) == ("MB", 1.0) and traffic_unit([0.5, 0.9]) == ("kB", 1e-3)
    assert traffic_unit([3.2, 1500.0]) == ("GB", 1e3) and traffic_unit([3.2, 1500.0], by="smallest") == ("MB", 1.0)
    assert traffic_unit([None, float("nan"), 0.0]) == ("MB", 1.0)
    assert traffic_unit([1e-5]) == ("kB", 1e-3)  # below a kilobyte: still the smallest unit
    assert traffic_decimals([15.003, 20.003], 1.0) == 1  # the column's own digits suffice
    assert traffic_decimals([0.803, 32.003], 1.0) == 2  # 0.80
    assert traffic_decimals([0.032, 32.0], 1.0) == 3  # 0.032, a top-k run beside a plain one
    assert traffic_decimals([900.0, 1500.0], 1e3) == 2  # 0.90 GB
    assert traffic_decimals([None], 1.0, 1) == 1


# --- the table --------------------------------------------------------------------------------------------------


def _compressed_beside_plain(tmp_path: Path, old: bool = False) -> list:
    """A sends 4 MB down and 4 MB up per round and reaches 0.9 at round 3 (seed 0) and round 2 (seed 1); B sends
    4 MB down and 1 MB up and reaches it at round 3 on both seeds. `old`: B's folders have no byte columns."""
    runs = []
    for seed, curve in enumerate(([0.1, 0.5, 0.7, 0.9, 0.92], [0.1, 0.6, 0.9, 0.91, 0.93])):
        fake_run(tmp_path / f"A{seed}", curve, 4e6, 4e6)
        runs.append(("fedavg", "x", seed, load_run(tmp_path / f"A{seed}", 0.9)))
    for seed in range(2):
        fake_run(tmp_path / f"B{seed}", [0.1, 0.5, 0.7, 0.9, 0.95], *((None, None) if old else (4e6, 1e6)))
        runs.append(("fedavg+fedzip", "x", seed, load_run(tmp_path / f"B{seed}", 0.9)))
    return build_rows(runs)


def test_traffic_cells_are_means_with_t_intervals_ranked_lower_first(tmp_path):
    a, b = _compressed_beside_plain(tmp_path)
    # A: 0.003 + 3 · 8 = 24.003 MB and 0.003 + 2 · 8 = 16.003 MB; B: 0.003 + 3 · 5 = 15.003 MB on both seeds
    assert a.cells["mb_to_target"].by_seed == pytest.approx({0: 24.003, 1: 16.003})
    assert b.cells["mb_to_target"].by_seed == pytest.approx({0: 15.003, 1: 15.003})
    # half-width t(1) · s / √2, s = 8 / √2: t(1) · 4
    assert a.cells["mb_to_target"].unit == "MB" and a.cells["mb_to_target"].text(1) == f"20.0 ± {T1 * 4:.1f} MB"
    # B is lower on both seeds, but by 9 and 1 MB: the paired interval includes 0, so its win is only ≈
    assert b.cells["mb_to_target"].best and b.cells["mb_to_target"].tie and not a.cells["mb_to_target"].best
    # whole run, four trained rounds: 32.003 and 20.003 MB on every seed, so the win is exact
    assert a.cells["total_megabytes"].by_seed == pytest.approx({0: 32.003, 1: 32.003})
    assert b.cells["total_megabytes"].text(1) == "20.0 ± 0.0 MB"
    assert b.cells["total_megabytes"].best and not b.cells["total_megabytes"].tie
    # uplink ratio to the first strategy, seed by seed: 4 MB / 1 MB; the baseline against itself 1
    assert b.cells["uplink_ratio"].by_seed == {0: 4.0, 1: 4.0} and a.cells["uplink_ratio"].by_seed == {0: 1.0, 1: 1.0}
    assert not b.cells["uplink_ratio"].best  # a property of the encoding, not ranked
    text = markdown_table([a, b], 0.9)
    assert "traffic to target (down + up)" in text and "total traffic (down + up)" in text
    assert "**15.0 ± 0.0 MB** ≈" in text and "4.0 ± 0.0" in text and RATIO_NOTE in text
    assert "10⁶ bytes" in text and "≥ 0.9" in text
    headers = [column.header for column in rich_table([a, b], 0.9).columns]
    assert "traffic→target" in headers and "uplink ×" in headers and "total traffic (down + up)" not in headers
    rows = list(csv.DictReader(io.StringIO(csv_table([a, b]))))
    assert float(rows[0]["mb_to_target_mean"]) == pytest.approx(20.003)  # raw MB
    assert float(rows[1]["total_megabytes_mean"]) == pytest.approx(20.003) and rows[1]["total_megabytes_n"] == "2"
    assert float(rows[1]["uplink_ratio_mean"]) == 4.0 and rows[1]["mb_to_target_not_reached"] == "0"


def test_a_ratio_of_one_everywhere_is_not_worth_a_column(tmp_path):
    for name in "AB":  # two strategies that send the same bytes
        fake_run(tmp_path / name, [0.1, 0.95], 3e6, 2e6)
    rows = build_rows([(name, "x", 0, load_run(tmp_path / name, 0.9)) for name in "AB"])
    keys = [column.key for column in visible_columns(rows)]
    assert "mb_to_target" in keys and "total_megabytes" in keys and "uplink_ratio" not in keys
    assert RATIO_NOTE not in markdown_table(rows, 0.9)
    assert float(next(csv.DictReader(io.StringIO(csv_table(rows))))["uplink_ratio_mean"]) == 1.0  # the csv keeps it


def test_a_compressed_row_keeps_two_digits_beside_a_plain_one(tmp_path):
    fake_run(tmp_path / "plain", [0.1, 0.95], 4e6, 4e6)  # 0.003 + 8 MB
    fake_run(tmp_path / "topk", [0.1, 0.95], 1.5e4, 1.5e4)  # 0.003 + 0.03 MB
    plain, topk = build_rows([(name, "x", 0, load_run(tmp_path / name, 0.9)) for name in ("plain", "topk")])
    assert plain.cells["mb_to_target"].text(1) == "8.003 MB" and topk.cells["mb_to_target"].text(1) == "0.033 MB"
    assert topk.cells["total_megabytes"].best and topk.cells["total_megabytes"].tie  # one seed: every best is ≈
    assert topk.cells["uplink_ratio"].text(1) == "266.7"  # 4 MB / 15 kB
    assert "| **0.033 MB** ≈ |" in markdown_table([plain, topk], 0.9)


def test_old_run_folders_show_no_traffic(tmp_path):
    a, b = _compressed_beside_plain(tmp_path, old=True)
    for key in ("mb_to_target", "total_megabytes", "uplink_ratio"):
        assert b.cells[key].text(1) == "—" and b.cells[key].missing == 0  # unknown, not ✗
    assert a.cells["mb_to_target"].best  # the only known cell
    text = markdown_table([a, b], 0.9)
    assert f"**20.0 ± {T1 * 4:.1f} MB**" in text and "| — |" in text
    # no byte counts at all: no column and no legend line, but a stable csv header with blank cells
    text = markdown_table([b], 0.9)
    assert "traffic" not in text and "10⁶ bytes" not in text
    row = next(csv.DictReader(io.StringIO(csv_table([b]))))
    assert row["mb_to_target_mean"] == row["total_megabytes_mean"] == row["uplink_ratio_mean"] == ""
    # an old baseline leaves every row without a ratio, as there is nothing to divide
    fake_run(tmp_path / "new", [0.1, 0.95], 4e6, 1e6)
    old, new = build_rows([("old", "x", 0, load_run(tmp_path / "B0", 0.9)),
                           ("new", "x", 0, load_run(tmp_path / "new", 0.9))])
    assert new.cells["uplink_ratio"].values == [] and new.cells["total_megabytes"].values == [pytest.approx(5.003)]


def test_never_reaching_the_target_is_shown_when_bytes_were_counted(tmp_path):
    fake_run(tmp_path / "slow", [0.1, 0.3, 0.4], 1e6, 1e6)
    row = build_rows([("fedavg", "x", 0, load_run(tmp_path / "slow", 0.9))])[0]
    assert row.cells["mb_to_target"].text(1) == "— (1/1 ✗)" and row.cells["total_megabytes"].text(1) == "4.0 MB"


# --- the plot and the report ------------------------------------------------------------------------------------


def test_accuracy_against_megabytes_is_drawn_only_for_runs_with_bytes_and_logarithmic_for_wide_spreads(tmp_path,
                                                                                                        monkeypatch):
    scales = []
    save = compare_plots.save_figure
    monkeypatch.setattr(compare_plots, "save_figure",
                        lambda figure, path: (scales.append([a.get_xscale() for a in figure.axes]), save(figure, path)))
    curve = [0.1, 0.5, 0.7, 0.9, 0.95]
    plain = [load_run(fake_run(tmp_path / f"A{s}", curve, 4e6, 4e6), 0.9) for s in range(2)]  # 32 MB
    fedzip = [load_run(fake_run(tmp_path / f"B{s}", curve, 4e6, 1e6), 0.9) for s in range(2)]  # 20 MB: 1.6×
    topk = [load_run(fake_run(tmp_path / f"C{s}", curve, 1e5, 1e5), 0.9) for s in range(2)]  # 0.8 MB: 40×
    old = [load_run(fake_run(tmp_path / f"old{s}", curve), 0.9) for s in range(2)]
    runs = {"narrow": {"A": plain, "B": fedzip, "old": old}, "wide": {"A": plain, "C": topk}}
    assert plot_accuracy_vs_megabytes(runs, ["A", "B", "C", "old"], tmp_path / TRAFFIC_PLOT, 0.9)
    assert (tmp_path / TRAFFIC_PLOT).read_bytes().startswith(PNG_MAGIC)
    assert scales == [["linear", "log"]]  # one panel per setting, log only where totals differ by more than 10×
    assert not plot_accuracy_vs_megabytes({"x": {"old": old}}, ["old"], tmp_path / "none.png", 0.9)
    assert not (tmp_path / "none.png").exists()


def test_report_shows_the_traffic_plot_beside_the_time_plot_and_the_traffic_columns(tmp_path):
    grid = expand(["strategy=fedavg", "compression=none,topk", "seed=0"])
    experiment = compose_experiment(["strategy=fedavg", "seed=0"])  # the report reads the configs; no run needs them
    for point, up in zip(grid.points, (4e6, 1e6), strict=True):
        fake_run(run_folder(tmp_path, point), [0.1, 0.5, 0.9], 4e6, up, sim_times=[0.0, 10.0, 20.0])
    rows, path = report(Plan(grid, [experiment, experiment]), tmp_path, 0.9, "fedsim compare")
    assert [row.strategy for row in rows] == ["fedavg", "fedavg+topk"] and rows[1].baseline == "fedavg"
    assert (tmp_path / "plots" / TRAFFIC_PLOT).read_bytes().startswith(PNG_MAGIC)
    text = path.read_text()
    parser = _Images()
    parser.feed(text)
    assert len(parser.sources) == 4  # curves, time, traffic, client distributions
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", text)
    assert captions[1].startswith("global test accuracy against simulated time")
    assert captions[2].startswith("global test accuracy against communicated megabytes")
    side = re.search(r'<div class="side">(.*?)</div>', text, re.S)
    assert side and side.group(1).count("<figure>") == 2  # time and traffic in one row
    # fedavg: 0.003 + 2 · 8 MB to the target; topk: 0.003 + 2 · 5 MB; one seed, so every best is ≈
    assert "<th>traffic to target (down + up)</th>" in text and "<th>uplink ratio (first strategy" in text
    assert '<td class="num best tie"><span class="nb">10.0 MB ≈</span></td>' in text
    assert '<td class="num"><span class="nb">16.0 MB</span></td>' in text and ">4.0<" in text


# --- compression as part of a row -------------------------------------------------------------------------------


def test_a_swept_compression_gives_rows_side_by_side_not_settings():
    grid = expand(["strategy=fedavg", "compression=none,fedzip,topk", "seed=0,1,2"])
    assert grid.strategies == ["fedavg", "fedavg+fedzip", "fedavg+topk"] and grid.settings == [()]
    assert grid.fixed == [] and len(grid.points) == 9
    first, zipped = grid.points[0], grid.points[1]
    assert (zipped.strategy, zipped.strategy_name, zipped.compression, zipped.seed) == (
        "fedavg+fedzip", "fedavg", "fedzip", 0)
    assert zipped.overrides == ("strategy=fedavg", "compression=fedzip", "seed=0")  # what composes the run
    assert first.overrides == ("strategy=fedavg", "compression=none", "seed=0") and first.strategy == "fedavg"
    assert first.strategy_name == "fedavg" and first.compression == ""
    assert str(zipped.folder) == "fedavg+fedzip/default/seed=0" and zipped.setting_label == "default"
    # two strategies: each with its encodings, the first one's plain row first (the table's baseline)
    grid = expand(["strategy=fedavg,fedprox", "compression=none,qsgd", "partition.alpha=0.1,1.0"])
    assert grid.strategies == ["fedavg", "fedavg+qsgd", "fedprox", "fedprox+qsgd"]
    assert [p.setting_label for p in grid.points[:5]] == ["partition.alpha=0.1"] * 4 + ["partition.alpha=1.0"]
    assert grid.points[3].overrides == ("strategy=fedprox", "compression=qsgd", "seed=0", "partition.alpha=0.1")


def test_a_fixed_compression_names_every_row_and_is_no_setting():
    grid = expand(["strategy=fedavg,fedbuff", "compression=fp16", "+compression.extra=1"])
    assert grid.strategies == ["fedavg+fp16", "fedbuff+fp16"] and grid.fixed == ["+compression.extra=1"]
    assert [p.strategy_name for p in grid.points] == ["fedavg", "fedbuff"]
    assert grid.points[1].overrides == ("strategy=fedbuff", "compression=fp16", "seed=0", "+compression.extra=1")
    assert expand(["+compression=bf16"]).points[0].overrides == ("strategy=fedavg", "+compression=bf16", "seed=0")
    assert strategy_label("fedavg", "none") == strategy_label("fedavg") == "fedavg"
    # the proxy set shared by every strategy keeps each point's label and encoding
    shared = share_proxy_set(grid, {"fedavg": False, "fedbuff": True}, 200)
    assert [(p.strategy, p.compression, p.overrides[-1]) for p in shared.points] == [
        ("fedavg+fp16", "fp16", "server.proxy_size=200"), ("fedbuff+fp16", "fp16", "server.proxy_size=200")]


def test_without_a_compression_override_the_grid_is_unchanged():
    grid = expand(["strategy=fedavg,fedprox", "seed=0,1", "num_rounds=5"])
    assert grid.strategies == ["fedavg", "fedprox"]
    assert grid.points[0].overrides == ("strategy=fedavg", "seed=0", "num_rounds=5")
    assert all(p.compression == "" and p.strategy_name == p.strategy for p in grid.points)
    assert str(grid.points[1].folder) == "fedprox/default/seed=0"


def test_the_sweep_records_the_strategy_option_not_the_row_label(tmp_path):
    grid = expand(["strategy=fedasync", "compression=none,topk"])
    calls = []

    def run(experiment, folder, choices, show_progress, resume=False):  # type: ignore[no-untyped-def]
        calls.append((Path(folder).relative_to(tmp_path / "runs").as_posix(), choices["strategy"]))

    experiment = {"choices": {group: "x" for group in GROUPS}}
    run_sweep(grid.points, [experiment, experiment], tmp_path, run, show_progress=False)
    assert calls == [("fedasync/default/seed=0", "fedasync"), ("fedasync+topk/default/seed=0", "fedasync")]
    metrics = [load_run(fake_run(tmp_path / p.strategy, [0.1, 0.95], 1e6, 1e6), 0.9) for p in grid.points]
    rows = build_rows([(p.strategy, p.setting_label, p.seed, m) for p, m in zip(grid.points, metrics, strict=True)])
    assert [row.baseline for row in rows] == ["fedasync", "fedasync"]
    assert ASYNC_NOTE in legend(rows[1:], 0.9)  # fedasync+topk is still asynchronous


def test_error_feedback_is_a_row_of_its_own_and_an_uncompressed_row_has_none():
    grid = expand(["strategy=fedavg", "compression=none,topk", "compression.error_feedback=false,true", "seed=0,1"])
    assert grid.strategies == ["fedavg", "fedavg+topk", "fedavg+topk+ef"]
    assert grid.settings == [()]  # not a setting: rows side by side
    by_label = {point.strategy: point.overrides for point in grid.points if point.seed == 0}
    assert by_label["fedavg"] == ("strategy=fedavg", "compression=none", "seed=0")
    assert "compression.error_feedback=true" in [o.lower() for o in by_label["fedavg+topk+ef"]]
    assert {point.strategy_name for point in grid.points} == {"fedavg"}
    assert len({point.folder for point in grid.points}) == len(grid.points) == 6
