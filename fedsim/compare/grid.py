"""Expanding `fedsim compare` overrides (Hydra's comma lists, `range(...)`) into grid points.

Each point is one run: a strategy, a setting (the values of the other swept keys) and a seed. Its folder is fixed by
those three, so re-running the same command finds the runs it already finished.

An update encoding (`compression=<name>`, swept or fixed) is part of what a row compares, not a setting: a
compressed strategy is judged against the uncompressed one on the same partition, so `strategy=fedavg
compression=none,fedzip` gives the rows `fedavg` and `fedavg+fedzip` side by side. `none` adds nothing to the label.
So is error feedback (`compression.error_feedback=false,true`): its rows end in `+ef` (`fedavg+topk+ef`).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from ..errors import FedsimError

STRATEGY_KEY = "strategy"
SEED_KEY = "seed"
COMPRESSION_KEY = "compression"
FEEDBACK_KEY = "compression.error_feedback"
FEEDBACK_SUFFIX = "ef"
NO_COMPRESSION = "none"
PROXY_KEY = "server.proxy_size"


@dataclass(frozen=True)
class GridPoint:
    """One run of the grid: the overrides that compose it and the folder (relative to `<out>/runs`) it writes."""

    strategy: str  # the row label: the strategy, `+<compression>` when it encodes its updates (`strategy_label`)
    setting: tuple[tuple[str, str], ...]  # (key, value) of the swept keys other than strategy, compression and seed
    seed: int
    overrides: tuple[str, ...]
    compression: str = ""  # the compression option the label names; "" for none

    @property
    def strategy_name(self) -> str:
        """The strategy config option the point runs (its label without the compression; no option name holds a +)."""
        return self.strategy.split("+", 1)[0]

    @property
    def setting_label(self) -> str:
        return setting_label(self.setting)

    @property
    def folder(self) -> PurePosixPath:
        return PurePosixPath(self.strategy, slug(self.setting_label), f"seed={self.seed}")


@dataclass
class Grid:
    """The expanded grid, in run order: settings, then seeds, then strategies (an interrupted sweep leaves whole
    strategy comparisons for the first seeds)."""

    points: list[GridPoint]
    strategies: list[str]  # row labels (`strategy_label`), in grid order
    settings: list[tuple[tuple[str, str], ...]]
    seeds: list[int]
    fixed: list[str]  # the overrides with one value, applied to every point
    notes: list[str] = field(default_factory=list)  # what the grid changed for fairness (shown in the report)


def strategy_label(strategy: str, compression: str | None = None, feedback: bool = False) -> str:
    """`fedavg+fedzip`: the row a strategy with an update encoding fills (`fedavg+topk+ef` with error feedback); the
    strategy alone without one."""
    if not compression or compression == NO_COMPRESSION:
        return strategy
    return f"{strategy}+{compression}" + (f"+{FEEDBACK_SUFFIX}" if feedback else "")


def _true(value: str) -> bool:
    return value.strip().lower() == "true"


def _encodings(compressions: Sequence[tuple[str, str]],
               feedbacks: Sequence[tuple[str, str]]) -> list[tuple[tuple[str, ...], str, bool]]:
    """The update encodings each strategy runs with, in order: (their overrides, the compression option, error
    feedback). A compressed encoding comes without, then with error feedback when that is swept (`fedavg+topk,
    fedavg+topk+ef`); no compression has nothing to feed back, so it is one encoding."""
    encodings = []
    for written, option in compressions or [("", "")]:
        compressed = option not in ("", NO_COMPRESSION)
        for fed_written, feedback in (feedbacks if compressed else None) or [("", "")]:
            encodings.append((tuple(w for w in (written, fed_written) if w), option, _true(feedback)))
    return encodings


def setting_label(setting: Sequence[tuple[str, str]]) -> str:
    """`partition.alpha=0.1 · num_clients=20`, or `default` when nothing besides strategy, compression and seed is
    swept."""
    return " · ".join(f"{key}={value}" for key, value in setting) or "default"


def slug(label: str) -> str:
    """A folder name for a setting label: only letters, digits and `._=,-+`."""
    return re.sub(r"[^A-Za-z0-9._=,+-]+", "_", label.replace(" · ", "_")).strip("_") or "default"


def _parse(overrides: Sequence[str]) -> list[tuple[str, str, list[str]]]:
    """(key as written, key without +/~, values) per override; a non-sweep override has one value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as error:
        raise FedsimError(f"could not parse the overrides: {str(error).splitlines()[0]}") from None
    result = []
    for override in parsed:
        if override.is_sweep_override():
            values = list(override.sweep_string_iterator())
        else:
            values = [override.get_value_element_as_str()]
        result.append((override.get_key_element(), override.key_or_group, values))
    return result


def expand(overrides: Sequence[str], default_strategy: str = "fedavg", default_seed: int = 0) -> Grid:
    """The grid of `overrides`; strategy and seed default to the config's when not given."""
    parsed = _parse(overrides)
    keys = [key for _, key, _ in parsed]
    duplicated = sorted({key for key in keys if keys.count(key) > 1})
    if duplicated:
        raise FedsimError(f"{duplicated[0]} is given more than once")
    strategies, seeds = [default_strategy], [default_seed]
    compressions: list[tuple[str, str]] = []  # (override as written, option); none given: the config's default
    feedbacks: list[tuple[str, str]] = []  # (override as written, value) of compression.error_feedback
    fixed: list[str] = []
    swept: list[tuple[str, list[str]]] = []
    for written, key, values in parsed:
        if key == STRATEGY_KEY:
            strategies = values
        elif key == COMPRESSION_KEY:
            compressions = [(f"{written}={value}", value) for value in values]
        elif key == FEEDBACK_KEY:
            feedbacks = [(f"{written}={value}", value) for value in values]
        elif key == SEED_KEY:
            try:
                seeds = [int(value) for value in values]
            except ValueError:
                raise FedsimError(f"seed must be integers, got {','.join(values)}") from None
        elif len(values) > 1:
            swept.append((written, values))
        else:
            fixed.append(f"{written}={values[0]}")
    keys = [key for key, _ in swept]
    settings = [tuple(zip(keys, combo, strict=True)) for combo in itertools.product(*[v for _, v in swept])]
    # each strategy with each of its encodings, in that order: `fedavg, fedavg+fedzip, fedprox, fedprox+fedzip`
    rows = [(strategy, *encoding) for strategy in strategies for encoding in _encodings(compressions, feedbacks)]
    points = [
        GridPoint(strategy_label(strategy, option, feedback), setting, seed,
                  (f"{STRATEGY_KEY}={strategy}", *written, f"{SEED_KEY}={seed}", *fixed,
                   *(f"{k}={v}" for k, v in setting)),
                  "" if option == NO_COMPRESSION else option)
        for setting in settings for seed in seeds for strategy, written, option, feedback in rows
    ]
    labels = list(dict.fromkeys(strategy_label(strategy, option, feedback) for strategy, _, option, feedback in rows))
    return Grid(points, labels, settings, list(seeds), fixed)


def share_proxy_set(grid: Grid, needs_proxy: dict[str, bool], proxy_size: int) -> Grid:
    """One `server.proxy_size` for every strategy (unless the user set it): a proxy set is carved out of the training
    pool before partitioning, so FedLAW's `auto` = 200 alone would give it a different partition than FedAvg's."""
    if any(key.lstrip("+~") == PROXY_KEY for key, _ in (o.split("=", 1) for o in grid.fixed)) or any(
        key.lstrip("+~") == PROXY_KEY for setting in grid.settings for key, _ in setting
    ):
        return grid
    size = proxy_size if any(needs_proxy.values()) else 0
    points = [dataclasses.replace(p, overrides=(*p.overrides, f"{PROXY_KEY}={size}")) for p in grid.points]
    notes = list(grid.notes)
    if size:
        users = ", ".join(sorted(name for name, needed in needs_proxy.items() if needed))
        notes.append(f"{users} learn(s) on a server proxy set, so every strategy runs with {PROXY_KEY}={size}: the "
                     f"same {size} class-balanced training samples leave every client pool, and all strategies see "
                     "the same partition.")
    return Grid(points, grid.strategies, grid.settings, grid.seeds, [*grid.fixed, f"{PROXY_KEY}={size}"], notes)
