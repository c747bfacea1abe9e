"""What a paper's results table states beside its numbers: the shared setup (data, model, clients, participation,
local training, rounds), each strategy's own hyper-parameters and the client optimiser it runs.

The client optimiser is listed per strategy because strategies need not share it (q-FFL's clients run plain SGD
where the others use momentum): a comparison between strategies with different client optimisers mixes the
strategy's effect with the optimiser's, and the table and report say so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..build import client_optimizer

# Strategy config keys that are the grid's shared settings (interpolated from the top level), not hyper-parameters.
SHARED_STRATEGY_KEYS = frozenset({
    "_target_", "fraction_train", "fraction_evaluate", "min_train_nodes", "min_evaluate_nodes", "min_available_nodes",
    "seed", "local_epochs", "stragglers_fraction", "dataset",
    "client_optimizer",  # shown as the strategy's client optimiser
})
# Config-group entries whose keys the setup names but that are no hyper-parameter of the setting.
PARTITION_PLUMBING = frozenset({"_target_", "num_partitions", "seed", "shuffle"})


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_short(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return str(value)


def _group_name(experiment: Mapping[str, Any], group: str) -> str:
    from ..run import describe_choices  # imports the ClientApp and torch: only once a report is being written

    return describe_choices(experiment)[group]


def _group(experiments: Sequence[Mapping[str, Any]], group: str, skip: frozenset[str] = frozenset({"_target_"})) -> str:
    """`dirichlet (partition_by=label, alpha=0.1 | 1, ...)`: the group's option(s) and parameters over the grid, a
    parameter that differs between grid points listing its values."""
    names = list(dict.fromkeys(_group_name(e, group) for e in experiments))
    if len(names) > 1:
        return " | ".join(names) + " (varies)"
    params: dict[str, list[str]] = {}
    for experiment in experiments:
        for key, value in (experiment.get(group) or {}).items():
            if key not in skip and key != "name":
                params.setdefault(key, [])
                if _short(value) not in params[key]:
                    params[key].append(_short(value))
    shown = ", ".join(f"{key}={' | '.join(values)}" for key, values in params.items())
    return f"{names[0]} ({shown})" if shown else names[0]


def _participation(experiment: Mapping[str, Any]) -> str:
    share = float(experiment["fraction_train"])
    clients = int(experiment["num_clients"]) - len(experiment.get("exclude_clients") or [])
    return f"{share:.0%} of the clients train each round (≈{max(1, round(share * clients))} of {clients})"


# The setup a paper's experiments section states, in its order: config groups (option and parameters) ...
SETUP_GROUPS: tuple[tuple[str, str, frozenset[str]], ...] = (
    ("data set", "dataset", frozenset({"_target_"})),
    ("partition", "partition", PARTITION_PLUMBING),
    ("model", "model", frozenset({"_target_"})),
)
# ... then single values, read from a composed experiment.
SETUP_ITEMS: tuple[tuple[str, Callable[[Mapping[str, Any]], str]], ...] = (
    ("clients", lambda e: str(e["num_clients"])),
    ("participation", _participation),
    ("rounds", lambda e: str(e["num_rounds"])),
    ("local epochs", lambda e: str(e["client"]["local_epochs"])),
    ("batch size", lambda e: str(e["client"]["batch_size"])),
    ("client optimiser", lambda e: optimizer_label(client_optimizer(e))),
    ("client validation share", lambda e: _short(e["client"]["val_fraction"])),
    ("server proxy set", lambda e: f"{e['server']['proxy_size']} samples"),
    ("stragglers", lambda e: _short(e["stragglers"]["fraction"])),
    ("engine", lambda e: _group_name(e, "engine")),
)


def setup_table(experiments: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(item, value) for the whole grid; an item that differs between grid points lists its values."""
    rows = [(label, _group(experiments, group, skip)) for label, group, skip in SETUP_GROUPS]
    for label, read in SETUP_ITEMS:
        values = list(dict.fromkeys(read(e) for e in experiments))
        varies = " (differs by strategy: see Strategies)" if label == "client optimiser" else " (varies)"
        rows.append((label, values[0] if len(values) == 1 else " | ".join(values) + varies))
    seeds = list(dict.fromkeys(str(e["seed"]) for e in experiments))
    rows.append(("seeds", f"{', '.join(seeds)} (n={len(seeds)})"))
    return rows


def hyperparameters(experiment: Mapping[str, Any]) -> str:
    """The strategy's own hyper-parameters (its config minus the grid's shared settings): `a=0.5, b=0.1, ...`."""
    strategy = experiment["strategy"]
    params = {k: v for k, v in strategy.items() if k not in SHARED_STRATEGY_KEYS}
    if not float(experiment["stragglers"]["fraction"]):
        params.pop("straggler_mode", None)
    if float(experiment["client"].get("proximal_mu", 0.0)):
        params["client.proximal_mu"] = experiment["client"]["proximal_mu"]
    compression = experiment.get("compression") or {}
    if compression.get("name", "none") != "none":  # a row `fedavg+fedzip`: the compressor's settings too
        params.update({f"compression.{key}": value for key, value in compression.items()
                       if key not in ("_target_", "name")})
    return _short(params) or "—"


def optimizer_label(optimizer: Mapping[str, Any]) -> str:
    """`SGD lr=0.1 m=0.9 wd=0`."""
    name = str(optimizer.get("name", "SGD"))
    name = name.upper() if name.lower() == "sgd" else name
    return (f"{name} lr={_short(float(optimizer['lr']))} m={_short(float(optimizer['momentum']))} "
            f"wd={_short(float(optimizer['weight_decay']))}")


@dataclass
class StrategySetup:
    strategy: str
    target: str
    hyperparameters: list[str]  # one per distinct value over the grid (a swept strategy key gives several)
    optimizers: list[str]
    sources: list[str]


def strategy_table(strategies: Sequence[str], experiments: Sequence[Mapping[str, Any]],
                   names: Sequence[str]) -> list[StrategySetup]:
    """Per strategy (in grid order), its class, hyper-parameters and client optimiser; `names[i]` is the strategy
    of `experiments[i]`."""
    table = []
    for strategy in strategies:
        mine = [e for e, name in zip(experiments, names, strict=True) if name == strategy]
        if not mine:
            continue
        optimizers = [client_optimizer(e) for e in mine]
        table.append(StrategySetup(
            strategy,
            str(mine[0]["strategy"].get("_target_", "?")).rsplit(".", 1)[-1],
            list(dict.fromkeys(hyperparameters(e) for e in mine)),
            list(dict.fromkeys(optimizer_label(o) for o in optimizers)),
            list(dict.fromkeys(str(o.get("source", "")) for o in optimizers if o.get("source"))),
        ))
    return table

