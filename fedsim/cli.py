"""The `fedsim` command: `fedsim [override ...]` runs one Hydra-composed experiment (`-m` for a sweep);
`fedsim partition [override ...]` only builds the partition and reports its heterogeneity;
`fedsim contribution [override ...]` compares FedCE's client weights with leave-one-out contributions;
`fedsim compare [override ...]` runs a grid of strategies × settings × seeds and writes a comparison report;
`fedsim resume <run folder>` continues a run that stopped, from its last checkpoint;
`fedsim certs DIR` makes a federation's keys; `fedsim deploy server|node` runs the server machine or a client machine
of a deployment, `fedsim deploy local --nodes N [override ...]` all of it on this machine (fedsim/deploy/commands.py)."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .errors import FedsimError
from .progress import console


def _fail(error: Exception) -> None:
    console.print(f"[bold red]fedsim: error:[/] {error}", highlight=False, soft_wrap=True)
    sys.exit(2)


def _hydra_task(cfg) -> float:  # type: ignore[no-untyped-def]
    from hydra.core.hydra_config import HydraConfig

    from .config import GROUPS, to_experiment
    from .progress import summary_table
    from .run import run_experiment

    runtime = HydraConfig.get().runtime
    try:
        experiment = to_experiment(cfg)
        summary = run_experiment(experiment, runtime.output_dir, {g: str(runtime.choices[g]) for g in GROUPS})
    except FedsimError as error:
        _fail(error)
    console.print(summary_table(summary))
    console.print(f"run folder: {runtime.output_dir}", highlight=False, soft_wrap=True)
    return float(summary["final_accuracy"])


def _option(args: list[str], name: str) -> tuple[str | None, list[str]]:
    """The value of `name VALUE` (or `name=VALUE`) among `args`, and the remaining args."""
    for position, arg in enumerate(args):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1], args[:position] + args[position + 1 :]
        if arg == name:
            if position + 1 >= len(args):
                _fail(FedsimError(f"{name} needs a value"))
            return args[position + 1], args[:position] + args[position + 2 :]
    return None, args


def _output_folder(args: list[str], command: str) -> tuple[Path, list[str]]:
    """The `--out DIR` of a subcommand (default outputs/<command>/<time>) and the remaining overrides."""
    folder, args = _option(args, "--out")
    return Path(folder or Path("outputs") / command / time.strftime("%Y-%m-%d_%H-%M-%S")), args


def partition_command(args: list[str]) -> None:
    """`fedsim partition <overrides> [--out DIR]`: build the partition (no training) and report its heterogeneity."""
    from .config import compose_experiment, validate
    from .data.federation import build_federation
    from .partitions.report import CLUSTER_HEATMAP_FILE, HEATMAP_FILE, REPORT_FILE, write_report
    from .progress import partition_table

    out, args = _output_folder(args, "partition")
    try:
        experiment = compose_experiment(args)
        validate(experiment)
        federation = build_federation(experiment)
    except FedsimError as error:
        _fail(error)
    report = write_report(out, federation.label_counts(), " ".join(args) or "default partition", federation.cluster_counts)
    console.print(partition_table(report))
    heatmaps = [HEATMAP_FILE] + ([CLUSTER_HEATMAP_FILE] if federation.cluster_counts is not None else [])
    console.print(f"report: {out / REPORT_FILE}\nheatmap: " + ", ".join(str(out / name) for name in heatmaps), highlight=False, soft_wrap=True)


def contribution_command(args: list[str]) -> None:
    """`fedsim contribution <overrides> [--out DIR] [--reference clients|test]`: one FedCE run plus one run per
    left-out client."""
    from .config import compose_experiment, validate
    from .contribution import CONTRIBUTION_FILE, CONTRIBUTION_PLOT, contribution_overrides, contribution_table, run_contribution

    out, args = _output_folder(args, "contribution")
    reference, args = _option(args, "--reference")
    reference = reference or "clients"
    measure = "mean client accuracy" if reference == "clients" else "test accuracy"

    def progress_line(index: int, total: int, label: str, accuracy: float, seconds: float) -> None:
        console.print(f"[{index}/{total}] {label}: {measure} {accuracy:.4f} ({seconds:.1f} s)", highlight=False)

    try:
        experiment = compose_experiment(contribution_overrides(args))
        validate(experiment)
        report = run_contribution(experiment, out, progress_line, reference)
    except FedsimError as error:
        _fail(error)
    console.print(contribution_table(report))
    console.print(f"report: {out / CONTRIBUTION_FILE}\nplot: {out / CONTRIBUTION_PLOT}", highlight=False, soft_wrap=True)


def certs_command(args: list[str]) -> None:
    """`fedsim certs DIR ...`: a federation's keys and certificates (fedsim/deploy/commands.py)."""
    from .deploy.commands import certs_command as certs

    try:
        certs(args)
    except FedsimError as error:
        _fail(error)


def deploy_command(args: list[str]) -> None:
    """`fedsim deploy local|server|node|app ...`: run fedsim under Flower's Deployment Runtime (fedsim/deploy/commands.py)."""
    from .deploy.commands import deploy_command as deploy

    try:
        deploy(args)
    except FedsimError as error:
        _fail(error)


COMPARE_USAGE = """usage: fedsim compare <override ...> [--out DIR] [--target ACC] [--no-progress]

Runs every strategy × setting × seed of the overrides' comma lists (strategy=a,b seed=0,1,2 key=x,y), skipping runs
already finished in DIR (default outputs/compare/<time>), then writes comparison.md, comparison.csv, plots/ and
report.html there. --target: the accuracy for "rounds to target" (default 0.9)."""


def compare_command(args: list[str]) -> None:
    """`fedsim compare <overrides with a,b,c lists> [--out DIR] [--target ACC] [--no-progress]`: run the grid (runs
    already finished in DIR are kept), then write comparison.md/.csv, plots/ and report.html."""
    import shlex

    from .compare.pipeline import plan, report, sweep
    from .compare.table import rich_table
    from .progress import SweepProgress

    import datasets

    datasets.disable_progress_bars()  # the partitioners' "Flattening the indices" bars would break the live display
    if any(arg in ("-h", "--help") for arg in args):
        console.print(COMPARE_USAGE, highlight=False, soft_wrap=True)
        return
    command = "fedsim compare " + shlex.join(args)
    out, args = _output_folder(args, "compare")
    target_text, args = _option(args, "--target")
    show_progress = "--no-progress" not in args
    args = [arg for arg in args if arg != "--no-progress"]
    try:
        target = float(target_text) if target_text is not None else 0.9
    except ValueError:
        _fail(FedsimError(f"--target must be an accuracy in [0, 1], got {target_text}"))
    if not 0 <= target <= 1:
        _fail(FedsimError(f"--target must be an accuracy in [0, 1], got {target_text}"))
    unknown = [arg for arg in args if arg.startswith("-")]
    if unknown:
        _fail(FedsimError(f"unknown option {unknown[0]} (fedsim compare takes --out, --target, --no-progress)"))
    try:
        the_plan = plan(args)
    except FedsimError as error:
        _fail(error)
    grid = the_plan.grid
    console.print(f"{len(grid.points)} runs: {len(grid.strategies)} strategies × {len(grid.settings)} settings × "
                  f"{len(grid.seeds)} seeds → {out}", highlight=False, soft_wrap=True)
    for note in grid.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    from .compare.sweep import is_complete, run_folder

    pending = sum(not is_complete(run_folder(out, p), e) for p, e in zip(grid.points, the_plan.experiments))
    if pending < len(grid.points):
        console.print(f"{len(grid.points) - pending} runs already finished in {out}: skipped", highlight=False)
    with SweepProgress(pending, "runs", enabled=show_progress and pending > 0) as progress:

        def on_point(point, index: int, total: int, seconds: float, skipped: bool) -> None:  # type: ignore[no-untyped-def]
            if skipped:
                return
            label = f"{point.strategy} · {point.setting_label} · seed={point.seed}"
            console.print(f"[{index}/{total}] {label} ({seconds:.1f} s)", highlight=False, soft_wrap=True)
            progress.advance(f"last: {label}")

        try:
            sweep(the_plan, out, on_point=on_point, show_progress=show_progress)
        except FedsimError as error:
            _fail(error)
    rows, report_path = report(the_plan, out, target, command)
    # piped output has no width; keep the table's rows on one line each there
    from rich.console import Console

    wide = console if console.is_terminal else Console(stderr=True, width=max(console.width, 170))
    wide.print(rich_table(rows, target))
    console.print(f"table: {out / 'comparison.md'}, {out / 'comparison.csv'}\nreport: {report_path}", highlight=False,
                  soft_wrap=True)


def resume_command(args: list[str]) -> None:
    """`fedsim resume <run folder>`: continue a run that stopped, from its last checkpoint, with its own config."""
    import json

    import yaml

    from .checkpoint import CHECKPOINT_FILE
    from .progress import summary_table
    from .results import CONFIG_FILE, SUMMARY_FILE
    from .run import run_experiment

    federation, args = _option(args, "--federation")
    if len(args) != 1:
        _fail(FedsimError("usage: fedsim resume <run folder> [--federation NAME (a deployed run's SuperLink connection)]"))
    folder = Path(args[0])
    if not (folder / CONFIG_FILE).exists():
        _fail(FedsimError(f"{folder} is not a fedsim run folder (no {CONFIG_FILE})"))
    summary_path = folder / SUMMARY_FILE
    if summary_path.exists() and json.loads(summary_path.read_text()).get("complete"):
        console.print(f"{folder}: the run is already complete", highlight=False, soft_wrap=True)
        return
    if not (folder / CHECKPOINT_FILE).exists():
        console.print(f"{folder}: no checkpoint yet, starting the run from round 1", highlight=False, soft_wrap=True)
    from .deploy.resume import is_deployed_run, resume_deployed

    try:
        if is_deployed_run(folder):  # a deployed run continues on its federation, never as a simulation
            summary = resume_deployed(folder, federation, say=lambda line: console.print(line, highlight=False, soft_wrap=True, markup=False))
        elif federation is not None:
            raise FedsimError(f"--federation: {folder} is a simulated run (no deployment.json); it resumes on its own engine")
        else:
            summary = run_experiment(yaml.safe_load((folder / CONFIG_FILE).read_text()), folder, resume=True)
    except FedsimError as error:
        _fail(error)
    except KeyboardInterrupt:
        console.print("interrupted: the run folder keeps its last checkpoint", highlight=False)
        sys.exit(130)
    console.print(summary_table(summary))
    console.print(f"run folder: {folder}", highlight=False, soft_wrap=True)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `fedsim` console script."""
    import hydra

    from . import config_dir
    from .config import check_group_overrides, compose_experiment, validate

    args = list(sys.argv[1:] if argv is None else argv)
    subcommands = {"partition": partition_command, "contribution": contribution_command, "compare": compare_command,
                   "resume": resume_command, "deploy": deploy_command, "certs": certs_command}
    if args and args[0] in subcommands:
        subcommands[args[0]](args[1:])
        return
    overrides = [arg for arg in args if not arg.startswith("-")]
    sweeping = any(arg in ("-m", "--multirun") for arg in args)
    informational = any(arg.startswith(("--help", "-h", "--cfg", "-c", "--info", "--hydra-help")) for arg in args)
    try:
        check_group_overrides(overrides)
        if not sweeping and not informational:
            validate(compose_experiment(overrides))
    except FedsimError as error:
        _fail(error)
    sys.argv = [sys.argv[0] if sys.argv else "fedsim", *args]
    hydra.main(version_base=None, config_path=str(config_dir()), config_name="config")(_hydra_task)()


if __name__ == "__main__":
    main()
