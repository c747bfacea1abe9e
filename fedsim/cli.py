"""The `fedsim` command: `fedsim [override ...]` runs one Hydra-composed experiment (`-m` for a sweep);
`fedsim partition [override ...]` only builds the partition and reports its heterogeneity;
`fedsim contribution [override ...]` compares FedCE's client weights with leave-one-out contributions;
`fedsim certs DIR` makes TLS and SuperNode keys; `fedsim deploy local --nodes N [override ...]` runs the experiment
on a SuperLink and N SuperNodes on loopback."""

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


def _option(args: list[str], name: str, default: str, what: str) -> tuple[str, list[str]]:
    """The value of a subcommand's `name VALUE` option (or `default`) and the remaining arguments."""
    if name not in args:
        return default, args
    position = args.index(name)
    if position + 1 >= len(args):
        _fail(FedsimError(f"{name} needs {what}"))
    return args[position + 1], args[:position] + args[position + 2 :]


def _output_folder(args: list[str], command: str) -> tuple[Path, list[str]]:
    """The `--out DIR` of a subcommand (default outputs/<command>/<time>) and the remaining overrides."""
    folder, args = _option(args, "--out", str(Path("outputs") / command / time.strftime("%Y-%m-%d_%H-%M-%S")), "a folder")
    return Path(folder), args


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
    reference, args = _option(args, "--reference", "clients", "clients or test")
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


def _options(args: list[str], name: str) -> tuple[list[str], list[str]]:
    """Every value of a repeatable `name VALUE` option, and the remaining arguments."""
    values = []
    while name in args:
        value, args = _option(args, name, "", "a value")
        values.append(value)
    return values, args


def certs_command(args: list[str]) -> None:
    """`fedsim certs <out-dir> [--nodes N] [--host NAME ...]`: a CA, the SuperLink's TLS certificate and key, and N
    SuperNode key pairs (see fedsim/deploy/certs.py)."""
    from .deploy.certs import make_certificates

    nodes, args = _option(args, "--nodes", "0", "a number of SuperNodes")
    hosts, args = _options(args, "--host")
    if len(args) != 1 or args[0].startswith("-") or not nodes.isdigit():
        _fail(FedsimError("usage: fedsim certs <out-dir> [--nodes N] [--host NAME-OR-IP ...]"))
    files = make_certificates(Path(args[0]), int(nodes), tuple(hosts))
    console.print(f"CA: {files.ca_cert}\nSuperLink: {files.server_cert}, {files.server_key} "
                  f"(valid for {', '.join(['localhost', '127.0.0.1', *hosts])})", highlight=False, soft_wrap=True)
    for private, public in zip(files.node_private_keys, files.node_public_keys, strict=True):
        console.print(f"SuperNode key: {private} (register {public} with `flwr supernode register`)", highlight=False, soft_wrap=True)


def deploy_command(args: list[str]) -> None:
    """`fedsim deploy local --nodes N [--insecure] [--out DIR] <overrides>`: a SuperLink and N SuperNodes on
    loopback run the experiment (see fedsim/deploy/local_federation.py)."""
    from .deploy.local_federation import deploy_local, federation_overrides, write_installed_app

    if args[:1] == ["node"]:  # `fedsim deploy node <flower-supernode options>`: check the link, then run the node
        from .deploy.preflight import supernode_main

        try:
            supernode_main(args[1:])
        except FedsimError as error:
            _fail(error)
        return
    if args[:1] == ["app"] and len(args) == 2:  # `fedsim deploy app DIR`: a Flower App folder for `flwr run DIR`
        console.print(f"Flower App (runs the installed fedsim): {write_installed_app(Path(args[1]))}", highlight=False)
        return
    if args[:1] != ["local"]:
        _fail(FedsimError("usage: fedsim deploy local --nodes N [--insecure] [--out DIR] <overrides> | fedsim deploy app DIR | "
                          "fedsim deploy node <flower-supernode options>"))
    out, args = _output_folder(args[1:], "deploy")
    nodes, args = _option(args, "--nodes", "3", "a number of SuperNodes")
    insecure = "--insecure" in args
    args = [arg for arg in args if arg != "--insecure"]
    try:
        overrides = federation_overrides(args, int(nodes) if nodes.isdigit() else -1)
        summary = deploy_local(int(nodes), overrides, out / "run", out / "federation", insecure=insecure,
                               say=lambda line: console.print(line, highlight=False, soft_wrap=True, markup=False))
    except FedsimError as error:
        _fail(error)
    except KeyboardInterrupt:
        console.print("interrupted: every SuperLink and SuperNode process was stopped", highlight=False)
        sys.exit(130)
    from .progress import summary_table

    console.print(summary_table(summary))
    console.print(f"run folder: {out / 'run'}", highlight=False, soft_wrap=True)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `fedsim` console script."""
    import hydra

    from . import config_dir
    from .config import check_group_overrides, compose_experiment, validate

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["partition"]:
        partition_command(args[1:])
        return
    if args[:1] == ["contribution"]:
        contribution_command(args[1:])
        return
    if args[:1] in (["deploy"], ["certs"]):
        (deploy_command if args[0] == "deploy" else certs_command)(args[1:])
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
