"""The recorder writes a complete, atomic run folder; the client statistics are computed as documented."""

from __future__ import annotations

import json

import pytest
import yaml

from fedsim.protocol.keys import EVAL_ACCURACY
from fedsim.recorder import Recorder, RoundRecord, client_accuracy_stats, tail_mean, write_atomic

from .conftest import read_metrics


def test_tail_means():
    values = [0.1, 0.9, 0.5, 0.7, 0.3, 0.2, 0.8, 0.4, 0.6, 1.0, 0.0, 0.55]
    assert tail_mean(values, 0.1, lowest=True) == pytest.approx((0.0 + 0.1) / 2)  # ceil(1.2) = 2 clients
    assert tail_mean(values, 0.1, lowest=False) == pytest.approx((1.0 + 0.9) / 2)
    assert tail_mean([0.4, 0.8], 0.1, lowest=True) == pytest.approx(0.4)  # at least one client
    stats = client_accuracy_stats([0.5, 1.0])
    assert stats["mean"] == pytest.approx(0.75) and stats["std"] == pytest.approx(0.25)


def test_recorder_writes_rows_summary_and_plot(tmp_path):
    recorder = Recorder(tmp_path, {"seed": 3, "num_rounds": 2}, num_clients=3, choices={"strategy": "fedavg"})
    recorder.record_round(RoundRecord(0, 0.1, 2.3))
    train = {0: {"num-examples": 10, "train_loss": 1.0}, 2: {"num-examples": 30, "train_loss": 2.0}}
    evaluate = {pid: {"num-examples": 5, EVAL_ACCURACY: accuracy} for pid, accuracy in enumerate([0.5, 0.7, 0.9])}
    recorder.record_round(RoundRecord(1, 0.6, 1.1, train=train, evaluate=evaluate, failures=1))
    rows = read_metrics(tmp_path)
    assert [row["round"] for row in rows] == ["0", "1"]
    assert float(rows[1]["train_loss"]) == pytest.approx((10 * 1.0 + 30 * 2.0) / 40)
    assert rows[1]["sampled"] == "0 2" and rows[1]["failures"] == "1"
    assert float(rows[1]["acc_client_1"]) == pytest.approx(0.7) and rows[0]["acc_client_1"] == ""
    assert float(rows[1]["client_acc_worst10"]) == pytest.approx(0.5)
    summary = recorder.finish({0: 0.5, 1: 0.7, 2: 0.9})
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == summary
    assert summary["final_accuracy"] == 0.6 and summary["best_round"] == 1 and summary["complete"] is True
    assert summary["client_accuracy"]["worst10"] == pytest.approx(0.5) and summary["client_accuracy"]["clients"] == 3
    assert {"fedsim", "flwr", "torch"} <= set(summary["versions"])
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["seed"] == 3
    assert (tmp_path / "accuracy.png").read_bytes()[:4] == b"\x89PNG"


def test_atomic_write_leaves_no_temporary_file(tmp_path):
    write_atomic(tmp_path / "a.txt", b"one")
    write_atomic(tmp_path / "a.txt", b"two")
    assert (tmp_path / "a.txt").read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_atomic_write_gives_the_usual_permissions_not_mkstemps_private_ones(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "summary.json", b"{}")
    finally:
        os.umask(old)
    assert (tmp_path / "summary.json").stat().st_mode & 0o777 == 0o644
