"""The heterogeneity report: statistics by hand, the `fedsim partition` command, and the report in run folders."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from fedsim.partition_report import heterogeneity_report


def test_statistics_by_hand():
    counts = np.array([[10, 0], [5, 5], [0, 10]])  # global mix (0.5, 0.5)
    report = heterogeneity_report(counts)
    first, middle, _ = report["labels"]["clients"]
    assert first["size"] == 10 and first["classes"] == 1 and first["entropy"] == pytest.approx(0.0)
    assert middle["entropy"] == pytest.approx(math.log(2)) and middle["js_divergence"] == pytest.approx(0.0, abs=1e-12)
    # JS(p=(1,0), g=(.5,.5)), base 2: m = (.75,.25); 0.5*KL(p||m) + 0.5*KL(g||m)
    kl_pm = math.log2(1 / 0.75)
    kl_gm = 0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)
    assert first["js_divergence"] == pytest.approx(0.5 * kl_pm + 0.5 * kl_gm)
    assert first["emd"] == pytest.approx(1.0) and middle["emd"] == pytest.approx(0.0)
    assert report["labels"]["summary"]["emd"]["mean"] == pytest.approx(2 / 3)


def test_partition_command_writes_report_and_heatmap(tmp_path):
    completed = subprocess.run([sys.executable, "-m", "fedsim.cli", "partition", "partition.alpha=0.1",
                                "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    report = json.loads((tmp_path / "partition.json").read_text())
    assert report["num_clients"] == 10 and sum(row["size"] for row in report["labels"]["clients"]) == 1437
    assert (tmp_path / "partition_labels.png").read_bytes()[:4] == b"\x89PNG"
    assert "partition heterogeneity" in completed.stdout and "Flattening" not in completed.stderr


def test_partition_command_refuses_bad_input_in_one_line(tmp_path):
    completed = subprocess.run([sys.executable, "-m", "fedsim.cli", "partition", "partition.alpha=0",
                                "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2
    assert [line for line in completed.stderr.splitlines() if line.strip()] == [
        "fedsim: error: partition.alpha=0 is not allowed: a number > 0 or a list of numbers > 0, one per client"
    ]


def test_every_run_folder_has_the_partition_report(run_quietly):
    _, run_dir = run_quietly("num_rounds=1", "partition=iid")
    report = json.loads((run_dir / "partition.json").read_text())
    assert report["labels"]["summary"]["js_divergence"]["max"] < 0.05  # IID clients are close to the global mix
    assert (run_dir / "partition_labels.png").is_file()


def test_embedding_partition_reports_over_clusters_too(tmp_path):
    completed = subprocess.run([sys.executable, "-m", "fedsim.cli", "partition", "partition=embedding",
                                "partition.alpha=0.1", "--out", str(tmp_path)], capture_output=True, text=True,
                               timeout=120)
    assert completed.returncode == 0, completed.stderr
    report = json.loads((tmp_path / "partition.json").read_text())
    clusters = np.array(report["clusters"]["counts"])
    assert clusters.shape == (10, 10) and clusters.sum() == 1437
    assert report["clusters"]["summary"]["js_divergence"]["mean"] > 0.3  # alpha = 0.1: clients far from the global mix
    assert (tmp_path / "partition_clusters.png").read_bytes()[:4] == b"\x89PNG"
    assert "clusters" in completed.stdout


@pytest.mark.parametrize("partition", ["embedding", "semantic"])
def test_feature_space_partitions_train_end_to_end(run_quietly, partition):
    summary, run_dir = run_quietly("num_rounds=8", f"partition={partition}")
    assert summary["final_accuracy"] > 0.88  # measured: 0.919 (embedding), 0.928 (semantic) after 8 rounds
    assert (run_dir / "partition_clusters.png").is_file() == (partition == "embedding")
