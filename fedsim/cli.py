"""The `fedsim` command: `fedsim [override ...]` runs one Hydra-composed experiment (`-m` for a sweep);
`fedsim partition [override ...]` only builds the partition and reports its heterogeneity;
`fedsim contribution [override ...]` compares FedCE's client weights with leave-one-out contributions;
`fedsim fairness-bounds [override ...]` solves the accuracy–fairness trade-off (AGLFOP) of the federation's data;
`fedsim compare [override ...]` runs a grid of strategies × settings × seeds and writes a comparison report;
`fedsim resume <run folder>` continues a run that stopped, from its last checkpoint;
`fedsim certs DIR` makes a federation's keys; `fedsim deploy server|node` runs the server machine or a client machine
of a deployment, `fedsim deploy local --nodes N [override ...]` all of it on this machine
(fedsim/deploy/commands.py)."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .errors import FedsimError
from .progress import console, output


def _fail(error: Exception) -> None:
    from rich.markup import escape

    console.print(f"[bold red]fedsim: error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
    sys.exit(2)


COMMANDS = {  # subcommand: what it does, in one line (`fedsim --help`)
    "partition": "build the partition only (no training) and report its heterogeneity",
    "compare": "run strategies × settings × seeds and write a comparison table, plots and an HTML report",
    "contribution": "compare FedCE's client weights with each client's leave-one-out contribution",
    "fairness-bounds": "best accuracy under global and local disparity budgets (AGLFOP), runs marked against it",
    "resume": "continue a stopped run from its last checkpoint",
    "certs": "make and manage a federation's keys and certificates",
    "deploy": "run the server, a client machine, or a whole federation here (Flower's Deployment Runtime)",
}


def main_help() -> str:
    """`fedsim --help`: the subcommands, how overrides work and each config group's options."""
    from .config import GROUPS, group_options

    lines = ["usage: fedsim [override ...]               run one experiment (default: FedAvg on digits, 10 clients)",
             "       fedsim -m [override with a,b ...]   a sweep: one run per combination, all validated first",
             "       fedsim <command> [...]              (fedsim <command> --help for its options)",
             "", "commands:"]
    lines += [f"  {name:<13} {summary}" for name, summary in COMMANDS.items()]
    lines += ["", "overrides (Hydra): key=value (num_rounds=50, client.lr=0.05) and group=option; the groups:"]
    lines += [f"  {group + '=':<13} {', '.join(group_options(group))}" for group in (*GROUPS, "tracking")]
    lines += ["",
              "fedsim --cfg job             print the composed config: every key, documented in configs/config.yaml",
              "fedsim --hydra-help          Hydra's own options (--multirun, --cfg, --info, ...)",
              "Results go to stdout, progress and diagnostics to stderr. Bad input: one line and exit code 2."]
    return "\n".join(lines)


def _wants_help(args: Sequence[str], usage: str) -> bool:
    """Print `usage` to stdout if `args` asks for help (-h / --help)."""
    if any(arg in ("-h", "--help") for arg in args):
        output.print(usage, highlight=False, soft_wrap=True, markup=False)
        return True
    return False


PARTITION_USAGE = """usage: fedsim partition [override ...] [--out DIR]

Builds the partition of the composed experiment (no training) and writes partition.json and heatmaps to DIR
(default outputs/partition/<time>); prints per-client sizes, label counts, entropy, JS divergence and EMD.
Example: fedsim partition partition=dirichlet partition.alpha=0.1 num_clients=20"""

CONTRIBUTION_USAGE = """usage: fedsim contribution [override ...] [--out DIR] [--reference clients|test]

Runs the experiment with strategy=fedce once, then once per client with that client left out (num_clients + 1 runs),
and reports how FedCE's client weights track each client's leave-one-out contribution (Pearson r), in
contribution.json and contribution.png. --reference: the accuracy compared (clients: mean over every client's
held-out split, the default; test: the pooled test split).
Example: fedsim contribution num_clients=6 num_rounds=10 --out contribution/"""

RESUME_USAGE = """usage: fedsim resume <run folder> [--federation NAME]

Continues a run that stopped (killed, interrupted, crashed) from its last checkpoint, with the config in its folder;
the result is the same as an uninterrupted run's. A deployed run resumes on its federation (--federation: the
SuperLink connection in the Flower App's pyproject.toml, if not the one it was started with)."""


def _hydra_task(cfg) -> float:  # type: ignore[no-untyped-def]
    from hydra.core.hydra_config import HydraConfig

    from .config import to_experiment
    from .progress import summary_table
    from .run import run_experiment

    runtime = HydraConfig.get().runtime
    try:
        experiment = to_experiment(cfg)
        summary = run_experiment(experiment, runtime.output_dir)  # its `choices` are the runtime's (to_experiment)
    except FedsimError as error:
        _fail(error)
    output.print(summary_table(summary))
    output.print(f"run folder: {runtime.output_dir}", highlight=False, soft_wrap=True, markup=False)
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
    from .partition_report import CLUSTER_HEATMAP_FILE, HEATMAP_FILE, REPORT_FILE, write_report
    from .progress import partition_table

    if _wants_help(args, PARTITION_USAGE):
        return
    out, args = _output_folder(args, "partition")
    try:
        experiment = compose_experiment(args)
        validate(experiment)
        federation = build_federation(experiment)
    except FedsimError as error:
        _fail(error)
    report = write_report(out, federation.label_counts(), " ".join(args) or "default partition",
                          federation.cluster_counts)
    output.print(partition_table(report))
    heatmaps = [HEATMAP_FILE] + ([CLUSTER_HEATMAP_FILE] if federation.cluster_counts is not None else [])
    output.print(f"report: {out / REPORT_FILE}\nheatmap: " + ", ".join(str(out / name) for name in heatmaps),
                 highlight=False, soft_wrap=True)


def contribution_command(args: list[str]) -> None:
    """`fedsim contribution <overrides> [--out DIR] [--reference clients|test]`: one FedCE run plus one run per
    left-out client."""
    # run_contribution validates every leave-one-out run before the first one
    from .config import compose_experiment
    from .contribution import (
        CONTRIBUTION_FILE,
        CONTRIBUTION_PLOT,
        contribution_overrides,
        contribution_table,
        run_contribution,
    )

    if _wants_help(args, CONTRIBUTION_USAGE):
        return
    out, args = _output_folder(args, "contribution")
    reference, args = _option(args, "--reference")
    reference = reference or "clients"
    measure = "mean client accuracy" if reference == "clients" else "test accuracy"

    def progress_line(index: int, total: int, label: str, accuracy: float, seconds: float) -> None:
        console.print(f"[{index}/{total}] {label}: {measure} {accuracy:.4f} ({seconds:.1f} s)", highlight=False)

    try:
        experiment = compose_experiment(contribution_overrides(args))
        report = run_contribution(experiment, out, progress_line, reference)
    except FedsimError as error:
        _fail(error)
    output.print(contribution_table(report))
    output.print(f"report: {out / CONTRIBUTION_FILE}\nplot: {out / CONTRIBUTION_PLOT}", highlight=False, soft_wrap=True)


FAIRNESS_BOUNDS_USAGE = """usage: fedsim fairness-bounds [override ...] [--grid N] [--max-bits B]
                              [--rows all|validation] [--runs DIR ...] [--out DIR]

The best accuracy any classifier can reach on the federation's rows (data set, partition, clients of the overrides;
binary label, binary sensitive attribute) when its global disparity I(Z;Ŷ) and local disparity I(Z;Ŷ|S) are held
under budgets, solved exactly (a convex program) on an N × N grid of budgets (default 10) from 0 to H(Z) and H(Z|S)
bits, beyond which a budget cannot bind (--max-bits B: both axes up to B bits instead). --rows: each client's rows
counted (all, the default, or validation: the rows a run's final audit uses). --runs: run folders, or folders holding
them (a `fedsim compare` output), of the same data set and partition; each strategy's mean is marked with its accuracy
and the bound at its disparities. Writes bounds.csv, bounds.json and bounds.png to DIR
(default outputs/fairness_bounds/<time>).
Example: fedsim fairness-bounds dataset=fair_synthetic partition=dirichlet partition.partition_by=sensitive"""


def _runs_option(args: list[str]) -> tuple[list[str], list[str]]:
    """The folders after `--runs` (up to the next option or `key=value` override that is not a folder), and the
    remaining args."""
    if "--runs" not in args:
        return [], args
    start = args.index("--runs")
    end = start + 1
    while end < len(args) and not args[end].startswith("-") and ("=" not in args[end] or Path(args[end]).exists()):
        end += 1
    if end == start + 1:
        _fail(FedsimError("--runs needs at least one run folder"))
    return args[start + 1 : end], args[:start] + args[end:]


def fairness_bounds_command(args: list[str]) -> None:
    """`fedsim fairness-bounds <overrides> [--grid N] [--max-bits B] [--rows R] [--runs DIR ...] [--out DIR]`: the
    accuracy–fairness trade-off of the configured federation."""
    from .config import compose_experiment, validate
    from .fairness_bounds import bounds_tables, fairness_bounds, write_report

    if _wants_help(args, FAIRNESS_BOUNDS_USAGE):
        return
    out, args = _output_folder(args, "fairness_bounds")
    runs, args = _runs_option(args)
    grid_text, args = _option(args, "--grid")
    max_bits_text, args = _option(args, "--max-bits")
    rows, args = _option(args, "--rows")
    unknown = [arg for arg in args if arg.startswith("-")]
    if unknown:
        _fail(FedsimError(f"unknown option {unknown[0]} (fedsim fairness-bounds takes --grid, --max-bits, --rows, "
                          "--runs, --out)"))
    try:
        grid = int(grid_text) if grid_text is not None else 10
    except ValueError:
        _fail(FedsimError(f"--grid {grid_text}: a whole number of budgets per axis"))
    try:
        max_bits = float(max_bits_text) if max_bits_text is not None else None
    except ValueError:
        _fail(FedsimError(f"--max-bits {max_bits_text}: a number of bits > 0"))

    def on_row(index: int, total: int, seconds: float) -> None:
        console.print(f"[{index}/{total}] budget rows solved ({seconds:.1f} s)", highlight=False)

    def warn(line: str) -> None:
        console.print(f"[yellow]warning:[/] {line}", highlight=False, soft_wrap=True)

    try:
        experiment = compose_experiment(args)
        validate(experiment)
        report = fairness_bounds(experiment, grid, rows or "all", max_bits, runs, on_row, warn)
    except FedsimError as error:
        _fail(error)
    paths = write_report(out, report)
    from rich.console import Console

    wide = output if output.is_terminal else Console(width=max(output.width, 140))  # piped: rows on one line each
    for table in bounds_tables(report):
        wide.print(table)
    output.print("\n".join(f"{kind}: {path}" for kind, path in paths.items()), highlight=False, soft_wrap=True)


def certs_command(args: list[str]) -> None:
    """`fedsim certs DIR ...`: a federation's keys and certificates (fedsim/deploy/commands.py)."""
    from .deploy.commands import certs_command as certs

    try:
        certs(args)
    except FedsimError as error:
        _fail(error)


def deploy_command(args: list[str]) -> None:
    """`fedsim deploy local|server|node|app ...`: run fedsim under Flower's Deployment Runtime
    (fedsim/deploy/commands.py)."""
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

    if _wants_help(args, COMPARE_USAGE):
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
    console.print(f"{len(grid.points)} runs: {len(grid.strategies)} strategies (with their compressions) × "
                  f"{len(grid.settings)} settings × {len(grid.seeds)} seeds → {out}", highlight=False, soft_wrap=True)
    for note in grid.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    from .compare.sweep import is_complete, run_folder

    pending = sum(not is_complete(run_folder(out, p), e)
                  for p, e in zip(grid.points, the_plan.experiments, strict=True))
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

    wide = output if output.is_terminal else Console(width=max(output.width, 170))
    wide.print(rich_table(rows, target))
    output.print(f"table: {out / 'comparison.md'}, {out / 'comparison.csv'}\nreport: {report_path}", highlight=False,
                  soft_wrap=True)


def resume_command(args: list[str]) -> None:
    """`fedsim resume <run folder>`: continue a run that stopped, from its last checkpoint, with its own config."""
    import json

    import yaml

    from .checkpoint import CHECKPOINT_FILE, load_checkpoint
    from .progress import summary_table
    from .recorder import CONFIG_FILE, SUMMARY_FILE
    from .run import run_experiment

    if _wants_help(args, RESUME_USAGE):
        return
    federation, args = _option(args, "--federation")
    if len(args) != 1:
        _fail(FedsimError("usage: fedsim resume <run folder> "
                          "[--federation NAME (a deployed run's SuperLink connection)]"))
    folder = Path(args[0])
    if not (folder / CONFIG_FILE).exists():
        _fail(FedsimError(f"{folder} is not a fedsim run folder (no {CONFIG_FILE})"))
    summary_path = folder / SUMMARY_FILE
    if summary_path.exists() and json.loads(summary_path.read_text()).get("complete"):
        output.print(f"{folder}: the run is already complete", highlight=False, soft_wrap=True, markup=False)
        return
    try:
        load_checkpoint(folder)  # a broken checkpoint: its one line now, before any work (simulated or deployed run)
    except FedsimError as error:
        _fail(error)
    if not (folder / CHECKPOINT_FILE).exists():
        console.print(f"{folder}: no checkpoint yet, starting the run from round 1", highlight=False, soft_wrap=True)
    from .deploy.resume import is_deployed_run, resume_deployed

    try:
        if is_deployed_run(folder):  # a deployed run continues on its federation, never as a simulation
            summary = resume_deployed(folder, federation, say=lambda line: console.print(
                line, highlight=False, soft_wrap=True, markup=False))
        elif federation is not None:
            raise FedsimError(f"--federation: {folder} is a simulated run (no deployment.json); "
                              "it resumes on its own engine")
        else:
            summary = run_experiment(yaml.safe_load((folder / CONFIG_FILE).read_text()), folder, resume=True)
    except FedsimError as error:
        _fail(error)
    except KeyboardInterrupt:
        console.print("interrupted: the run folder keeps its last checkpoint", highlight=False)
        sys.exit(130)
    output.print(summary_table(summary))
    output.print(f"run folder: {folder}", highlight=False, soft_wrap=True, markup=False)


SUBCOMMANDS = {"partition": partition_command, "compare": compare_command, "contribution": contribution_command,
               "fairness-bounds": fairness_bounds_command, "resume": resume_command, "certs": certs_command,
               "deploy": deploy_command}


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `fedsim` console script."""
    import hydra

    from . import config_dir
    from .config import check_group_overrides, compose_experiment, validate, validate_sweep

    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in SUBCOMMANDS:
        SUBCOMMANDS[args[0]](args[1:])
        return
    if any(arg in ("-h", "--help") for arg in args):
        output.print(main_help(), highlight=False, soft_wrap=True, markup=False)
        return
    overrides = [arg for arg in args if not arg.startswith("-")]
    sweeping = any(arg in ("-m", "--multirun") for arg in args)
    informational = any(arg.startswith(("--cfg", "-c", "--info", "--hydra-help")) for arg in args)
    try:
        check_group_overrides(overrides)
        if sweeping and not informational:
            validate_sweep(overrides)
        elif not informational:
            validate(compose_experiment(overrides))
    except FedsimError as error:
        _fail(error)
    sys.argv = [sys.argv[0] if sys.argv else "fedsim", *args]
    hydra.main(version_base=None, config_path=str(config_dir()), config_name="config")(_hydra_task)()


if __name__ == "__main__":
    main()
