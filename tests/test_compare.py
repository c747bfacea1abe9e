"""`fedsim compare`: grid expansion, fairness across strategies, the table's numbers, resuming, the report."""

from __future__ import annotations

import base64
import csv
import io
import json
import shutil
import subprocess
import tempfile
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
from fedsim.config import compose_experiment, resolve_auto_values
from fedsim.data.federation import build_federation
from fedsim.partitions.report import HEATMAP_FILE, plot_heatmap
from fedsim.results import client_accuracy_stats

from .conftest import read_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --- fake run folders ---------------------------------------------------------------------------------------


def write_fake_run(folder: Path, curve: list[float], clients: list[float], round_seconds: float = 0.5,
                   weights: list[float] | None = None, experiment: dict | None = None) -> None:
    """A run folder as the recorder leaves it: metrics.csv (round 0 = initial model), summary.json, config.yaml."""
    folder.mkdir(parents=True, exist_ok=True)
    header = ["round", "test_accuracy", "round_seconds"] + [f"acc_client_{k}" for k in range(len(clients))]
    header += [f"weight_client_{k}" for k in range(len(weights or []))]
    lines = [",".join(header)]
    for r, accuracy in enumerate(curve):
        row = [str(r), str(accuracy), str(round_seconds if r else 9.0)] + [str(c) for c in clients]
        row += [str(w) if r else "" for w in (weights or [])]
        lines.append(",".join(row))
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    trained = curve[1:]
    summary = {
        "final_accuracy": curve[-1], "best_accuracy": max(trained), "best_round": 1 + trained.index(max(trained)),
        "rounds_completed": len(curve) - 1, "client_accuracy": {**client_accuracy_stats(clients), "clients": len(clients)},
        "final_client_accuracy": {str(k): c for k, c in enumerate(clients)},
        "wall_seconds": 1.0, "complete": True,
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    if experiment is not None:
        (folder / "config.yaml").write_text(yaml.safe_dump(resolve_auto_values(experiment), sort_keys=False))


def fake_run(calls: list[Path]):  # type: ignore[no-untyped-def]
    """A stand-in for run_experiment that writes a small, deterministic run folder (and a partition heatmap)."""

    def run(experiment, folder, choices=None, show_progress=True):  # type: ignore[no-untyped-def]
        calls.append(Path(folder))
        seed, name = int(experiment["seed"]), str(experiment["strategy"]["_target_"])
        shift = 0.05 * (len(name) % 3) + 0.01 * seed
        curve = [0.1, 0.5 + shift, 0.8 + shift]
        write_fake_run(Path(folder), curve, [0.6 + shift, 0.9, 1.0], weights=[0.2, 0.3, 0.5], experiment=experiment)
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
    assert [(p.strategy, p.seed) for p in grid.points[:4]] == [("fedavg", 0), ("fedprox", 0), ("fedavg", 1), ("fedprox", 1)]
    assert len({p.folder for p in grid.points}) == len(grid.points)


def test_expand_understands_ranges_and_defaults():
    grid = expand(["seed=range(0,3)"])
    assert grid.strategies == ["fedavg"] and grid.seeds == [0, 1, 2] and grid.settings == [()]
    assert grid.points[0].setting_label == "default" and str(grid.points[0].folder) == "fedavg/default/seed=0"


def test_one_proxy_size_for_every_strategy_when_one_needs_a_proxy_set():
    grid = share_proxy_set(expand(["strategy=fedavg,fedlaw"]), {"fedavg": False, "fedlaw": True}, 200)
    assert all("server.proxy_size=200" in p.overrides for p in grid.points)
    assert "fedlaw" in grid.notes[0]
    without = share_proxy_set(expand(["strategy=fedavg,fedprox"]), {"fedavg": False, "fedprox": False}, 200)
    assert all("server.proxy_size=0" in p.overrides for p in without.points) and not without.notes
    chosen = share_proxy_set(expand(["strategy=fedavg,fedlaw", "server.proxy_size=50"]), {"fedavg": False, "fedlaw": True}, 200)
    assert all(p.overrides.count("server.proxy_size=50") == 1 and "server.proxy_size=200" not in p.overrides
               for p in chosen.points)


# --- fairness -------------------------------------------------------------------------------------------------


def test_every_strategy_of_a_seed_gets_the_same_partition_and_proxy_set():
    the_plan = plan(["strategy=fedavg,fedlaw,feddisco", "seed=0,1"])
    assert {e["server"]["proxy_size"] for e in the_plan.experiments} == {200}
    by_seed: dict[int, list] = {}
    for point, experiment in zip(the_plan.grid.points, the_plan.experiments):
        federation = build_federation(experiment)
        splits = [row for k in range(federation.num_clients) for row in federation.client_rows(k)]  # train, val
        by_seed.setdefault(point.seed, []).append((federation.proxy_rows, splits))
    for federations in by_seed.values():
        proxy, splits = federations[0]
        for other_proxy, other_splits in federations[1:]:
            assert np.array_equal(proxy, other_proxy)
            assert all(np.array_equal(a, b) for a, b in zip(splits, other_splits, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(by_seed[0][0][1], by_seed[1][0][1]))


def test_without_a_shared_proxy_size_fedlaw_would_see_another_partition():
    """Why the grid sets server.proxy_size: `auto` carves 200 samples for FedLAW only."""
    fedavg = build_federation(resolve_auto_values(compose_experiment(["strategy=fedavg"])))
    fedlaw = build_federation(resolve_auto_values(compose_experiment(["strategy=fedlaw"])))
    assert len(fedavg.proxy_rows) == 0 and len(fedlaw.proxy_rows) == 200
    assert not all(np.array_equal(a, b) for a, b in zip(fedavg.client_indices, fedlaw.client_indices))


def test_strategies_of_a_seed_start_from_the_same_model_and_sample_the_same_clients(tmp_path):
    """A real (tiny) sweep: the same initial model (round 0 evaluates it), partition and sampled clients per round."""
    the_plan = plan(["strategy=fedavg,feddisco,fedlaw", "seed=3", "num_rounds=3", "fraction_train=0.5", "client.local_epochs=1",
                     "progress=false"])
    run_sweep(the_plan.grid.points, the_plan.experiments, tmp_path, show_progress=False)
    folders = [run_folder(tmp_path, p) for p in the_plan.grid.points]
    metrics = [read_metrics(folder) for folder in folders]
    assert len({rows[0]["test_loss"] for rows in metrics}) == 1  # round 0 evaluates the initial model
    sampled = [[row["sampled"] for row in rows[1:]] for rows in metrics]
    assert sampled[0] == sampled[1] == sampled[2] and all(len(s.split()) == 5 for s in sampled[0])
    assert len(set(sampled[0])) > 1  # the sampler does draw different clients from round to round
    assert len({(folder / "partition.json").read_text() for folder in folders}) == 1


# --- table ------------------------------------------------------------------------------------------------------


def test_table_means_stds_best_ties_and_rounds_to_target(tmp_path):
    # by hand: A final 0.80, 0.90 -> 0.85 ± 0.05; B final 0.86, 0.88 -> 0.87 ± 0.01; |Δ| = 0.02 < 0.05: a tie
    write_fake_run(tmp_path / "a0", [0.1, 0.5, 0.80], [0.5, 1.0], round_seconds=1.0)
    write_fake_run(tmp_path / "a1", [0.1, 0.86, 0.90], [0.7, 0.9], round_seconds=3.0)
    write_fake_run(tmp_path / "b0", [0.1, 0.7, 0.86], [0.9, 0.9], round_seconds=0.5)
    write_fake_run(tmp_path / "b1", [0.1, 0.85, 0.88], [0.8, 1.0], round_seconds=0.5)
    runs = [("A", "s", 0, load_run(tmp_path / "a0", 0.85)), ("A", "s", 1, load_run(tmp_path / "a1", 0.85)),
            ("B", "s", 0, load_run(tmp_path / "b0", 0.85)), ("B", "s", 1, load_run(tmp_path / "b1", 0.85))]
    a, b = build_rows(runs)
    assert a.seeds == [0, 1] and b.seeds == [0, 1]
    assert a.cells["final_accuracy"].mean == pytest.approx(0.85) and a.cells["final_accuracy"].std == pytest.approx(0.05)
    assert b.cells["final_accuracy"].mean == pytest.approx(0.87) and b.cells["final_accuracy"].std == pytest.approx(0.01)
    assert b.cells["final_accuracy"].best and b.cells["final_accuracy"].tie and not a.cells["final_accuracy"].best
    # best accuracy: A 0.80, 0.90 -> 0.85; B 0.86, 0.88 -> 0.87
    assert a.cells["best_accuracy"].mean == pytest.approx(0.85) and b.cells["best_accuracy"].best
    # worst-10% of two clients is the lower one: A 0.5, 0.7 -> 0.6 ± 0.1; B 0.9, 0.8 -> 0.85 ± 0.05; |Δ| > spread
    assert a.cells["worst10"].mean == pytest.approx(0.6) and a.cells["worst10"].std == pytest.approx(0.1)
    assert b.cells["worst10"].mean == pytest.approx(0.85) and b.cells["worst10"].best and not b.cells["worst10"].tie
    # client std (lower is better): A 0.25, 0.10 -> 0.175 ± 0.075; B 0.0, 0.1 -> 0.05 ± 0.05
    assert a.cells["client_std"].mean == pytest.approx(0.175) and a.cells["client_std"].std == pytest.approx(0.075)
    assert b.cells["client_std"].mean == pytest.approx(0.05) and b.cells["client_std"].best
    # rounds to 0.85: A never (seed 0), 1 (seed 1); B 2, 1 -> 1.5 ± 0.5; fewer misses beat a lower mean
    assert a.cells["rounds_to_target"].values == [1.0] and a.cells["rounds_to_target"].missing == 1
    assert b.cells["rounds_to_target"].mean == pytest.approx(1.5) and b.cells["rounds_to_target"].std == pytest.approx(0.5)
    assert b.cells["rounds_to_target"].best
    # seconds per round over trained rounds only (round 0 is setup): A 1.0, 3.0 -> 2.0 ± 1.0
    assert a.cells["seconds_per_round"].mean == pytest.approx(2.0) and a.cells["seconds_per_round"].std == pytest.approx(1.0)
    text = markdown_table([a, b], 0.85)
    assert "| A | s | 2 | 0.850 ± 0.050 |" in text and "**0.870 ± 0.010** ≈" in text
    assert "1.0 ± 0.0 (1/2 ✗)" in text and "**1.5 ± 0.5**" in text


def test_best_is_marked_within_each_setting():
    from fedsim.compare.table import RunMetrics

    def metrics(final: float) -> RunMetrics:
        return RunMetrics(final, final, 0.5, 0.1, None, 1.0, [(0, 0.1), (1, final)], [0.5])

    rows = build_rows([("A", "x", 0, metrics(0.9)), ("B", "x", 0, metrics(0.8)),
                       ("A", "y", 0, metrics(0.3)), ("B", "y", 0, metrics(0.4))])
    assert [row.cells["final_accuracy"].best for row in rows] == [True, False, False, True]
    assert all(row.cells["rounds_to_target"].text(1) == "— (1/1 ✗)" for row in rows)


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


@pytest.fixture
def fake_compare(tmp_path, monkeypatch) -> Path:
    """`fedsim compare` through the CLI, with fake runs: the report of a 2 strategies × 2 settings × 2 seeds grid."""
    calls: list[Path] = []
    monkeypatch.setattr("fedsim.run.run_experiment", fake_run(calls))
    out = tmp_path / "cmp"
    cli.main(["compare", "strategy=fedavg,feddisco", "seed=0,1", "partition.alpha=0.1,1.0", "num_rounds=2",
              "--target", "0.8", "--no-progress", "--out", str(out)])
    assert len(calls) == 8
    return out


def test_cli_writes_tables_and_report_and_resumes(fake_compare, monkeypatch, capsys):
    out = fake_compare
    with open(out / "comparison.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [(r["strategy"], r["setting"]) for r in rows] == [
        ("fedavg", "partition.alpha=0.1"), ("feddisco", "partition.alpha=0.1"),
        ("fedavg", "partition.alpha=1.0"), ("feddisco", "partition.alpha=1.0")]
    assert rows[0]["seeds"] == "0 1" and float(rows[0]["final_accuracy_std"]) == pytest.approx(0.005)
    assert "**" in (out / "comparison.md").read_text()
    calls: list[Path] = []
    monkeypatch.setattr("fedsim.run.run_experiment", fake_run(calls))
    cli.main(["compare", "strategy=fedavg,feddisco", "seed=0,1", "partition.alpha=0.1,1.0", "num_rounds=2",
              "--target", "0.8", "--no-progress", "--out", str(out)])
    assert calls == [] and "8 runs already finished" in capsys.readouterr().err


def test_report_images_are_embedded_pngs(fake_compare):
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


CHROMIUM = Path("/usr/bin/chromium")
CHECK_IMAGES = ("<script>window.addEventListener('load', () => { const images = [...document.images]; "
                "document.body.dataset.images = images.length; document.body.dataset.shown = "
                "images.filter(i => i.complete && i.naturalWidth > 0).length; });</script>")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install chromium)")
def test_report_renders_in_headless_chromium(fake_compare):
    probe = fake_compare / "probe.html"
    shutil.copyfile(fake_compare / "report.html", probe)
    probe.write_text(probe.read_text().replace("</body>", CHECK_IMAGES + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run([str(CHROMIUM), *flags, f"--user-data-dir={profile}", "--virtual-time-budget=5000",
                              "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    assert 'data-images="5"' in dom.stdout and 'data-shown="5"' in dom.stdout, dom.stderr[-2000:]
    screenshot = fake_compare / "report.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([str(CHROMIUM), *flags, f"--user-data-dir={profile}", f"--screenshot={screenshot}",
                        "--window-size=1400,3000", (fake_compare / "report.html").as_uri()],
                       capture_output=True, timeout=120, check=True)
    assert screenshot.read_bytes().startswith(PNG_MAGIC)


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
