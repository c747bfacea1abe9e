"""The command line a newcomer meets: help for every command, whole sweeps validated first, results on stdout and
progress on stderr (a line per round without a terminal), and one naming of a run's config-group choices."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from fedsim.cli import COMMANDS, SUBCOMMANDS, main
from fedsim.config import compose_experiment, sweep_jobs
from fedsim.run import describe_choices, run_experiment


def _exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    return int(stopped.value.code)


def test_help_names_every_subcommand_with_one_line(capsys):
    assert set(COMMANDS) == set(SUBCOMMANDS)
    main(["--help"])
    out, err = capsys.readouterr()
    assert err == ""
    for name in SUBCOMMANDS:
        lines = [line for line in out.splitlines() if line.split()[:1] == [name]]
        assert len(lines) == 1 and len(lines[0].split()) > 3, name
    assert "fedprox" in out and "niid2" in out  # the groups' options too


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_every_subcommand_has_help(command, capsys):
    try:
        main([command, "--help"])
    except SystemExit as stopped:  # argparse's help exits 0
        assert stopped.code == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"usage: fedsim {command}") and err == "", (out, err)


def test_sweep_jobs_follow_hydra_sweep_syntax():
    assert sweep_jobs(["a=1,2", "b=range(0,2)", "c=x", "hydra.job.chdir=true"]) == [
        ["a=1", "b=0", "c=x"], ["a=1", "b=1", "c=x"], ["a=2", "b=0", "c=x"], ["a=2", "b=1", "c=x"]]


def test_a_sweep_with_one_bad_job_is_refused_before_the_first_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert _exit_code(["-m", "partition.alpha=0.5,0", "num_rounds=1"]) == 2
    out, err = capsys.readouterr()
    assert err.strip().splitlines() == [
        "fedsim: error: sweep job 1 of 2 (partition.alpha=0): partition.alpha=0 is not allowed: a number > 0 or a list "
        "of numbers > 0, one per client"]
    assert out == "" and not (tmp_path / "multirun").exists()


def test_contribution_with_one_client_is_refused_before_training(tmp_path, capsys):
    assert _exit_code(["contribution", "num_clients=1", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "num_clients=1" in err[0] and "exclude_clients" not in err[0]
    assert not (tmp_path / "c").exists()


def test_choices_are_named_the_same_by_a_run_and_by_resume(tmp_path):
    experiment = compose_experiment(["progress=false", "num_rounds=1", "num_clients=3", "partition=pathological",
                                     "partition.num_classes_per_partition=4", "strategy=fedprox"])
    summary = run_experiment(experiment, tmp_path / "run", show_progress=False)
    expected = {"dataset": "digits", "partition": "pathological", "model": "mlp", "strategy": "fedprox",
                "engine": "inprocess", "compression": "none"}
    assert summary["choices"] == expected
    assert describe_choices(yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())) == expected


@pytest.mark.slow
def test_results_on_stdout_and_a_progress_line_per_round_on_stderr_as_it_goes(tmp_path):
    """`RUN=$(fedsim ...)` captures the results; a redirected stderr gets each round's line when the round ends."""
    env = {**os.environ, "COLUMNS": "120"}
    process = subprocess.Popen([sys.executable, "-m", "fedsim.cli", "num_rounds=6", "num_clients=4",
                                f"hydra.run.dir={tmp_path / 'run'}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env, cwd=tmp_path)
    assert process.stderr is not None
    first = process.stderr.readline()
    running_after_first_round_line = process.poll() is None
    out, rest = process.communicate(timeout=300)
    err = first + rest
    assert process.returncode == 0, err
    assert first.startswith("round 0/6 acc ") and running_after_first_round_line
    rounds = [line for line in err.splitlines() if line.startswith("round ")]
    assert [line.split()[1] for line in rounds] == [f"{r}/6" for r in range(7)]
    assert "Flattening" not in err and "fedsim run summary" not in err
    assert "fedsim run summary" in out and out.strip().splitlines()[-1] == f"run folder: {tmp_path / 'run'}"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["choices"]["strategy"] == "fedavg" and summary["choices"]["partition"] == "dirichlet"


def test_summary_table_shows_jain_and_group_fairness_when_the_data_has_a_sensitive_attribute(run_quietly):
    from rich.console import Console

    from fedsim.progress import summary_table

    summary, _ = run_quietly("num_rounds=1", "num_clients=3", "dataset=fair_synthetic", "model=logreg")
    console = Console(width=200, record=True)
    console.print(summary_table(summary))
    text = console.export_text()
    assert f"{summary['fairness']['test_spd']:.4f}" in text and f"{summary['fairness']['test_eod']:.4f}" in text
    assert "Jain" in text and f"{summary['client_accuracy']['jain']:.4f}" in text


@pytest.mark.parametrize("group, target", [("strategy", "subprocess.Popen"), ("model", "os.system"),
                                           ("partition", "fedsim.models.MLP"), ("dataset", "subprocess.Popen"),
                                           ("engine", "os.system")])
def test_a_run_folder_config_cannot_make_resume_run_other_code(run_quietly, tmp_path, capsys, group, target):
    """`fedsim resume` builds what a run folder's config.yaml names: a tampered one is refused before anything runs."""
    marker = tmp_path / "ran"
    _, run_dir = run_quietly("num_rounds=1", "num_clients=3", "partition=iid")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config[group]["_target_"] = target
    config[group]["args"] = [["touch", str(marker)]]
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "summary.json").unlink()
    capsys.readouterr()
    assert _exit_code(["resume", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{group}._target_='{target}'" in err[0], err
    assert not marker.exists()


def test_nested_targets_are_refused(tmp_path):
    from fedsim.config import validate
    from fedsim.errors import ConfigError

    experiment = compose_experiment([])
    experiment["strategy"]["helper"] = {"_target_": "subprocess.Popen", "args": [["touch", str(tmp_path / "ran")]]}
    with pytest.raises(ConfigError, match=r"strategy.helper._target_='subprocess.Popen'"):
        validate(experiment)
    assert not (tmp_path / "ran").exists()


def test_partitioning_draws_no_progress_bar_of_its_own(capfd):
    """flwr-datasets' natural-id partitioner and `datasets` draw tqdm bars on stderr; fedsim reports progress itself."""
    from fedsim.data.federation import build_federation

    federation = build_federation(compose_experiment(["dataset=synthetic", "partition=natural", "num_clients=30"]))
    assert federation.num_clients == 30
    err = capfd.readouterr().err
    assert "Generating partition_id_to_indices" not in err and "it/s" not in err, err
