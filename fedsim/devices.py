"""Simulated devices (`devices.*`): each client's training speed, link and availability, for the virtual clock.

A client's call on its device lasts

    duration = samples / speed + bytes_down / bandwidth_down + bytes_up / bandwidth_up + 2 * latency

(`fedsim.clock` adds these up into rounds). The models, one profile per partition id:
- `identical`: every client has `speed`, `bandwidth` both ways, `latency` (the default: no systems heterogeneity);
- `uniform`: speed log-uniform in [speed/(1+s), speed*(1+s)], s = `speed_spread`; bandwidth likewise with
  `bandwidth_spread` (the same value both ways);
- `lognormal`: speed * exp(s * z), z ~ N(0, 1), so `speed` is the median and s the standard deviation of ln(speed);
  bandwidth likewise;
- `groups`: a fast group at (`speed`, `bandwidth`) and a slow one `slow_factor` times slower at both, the slow
  clients named (`slow_clients`), drawn (`slow_fraction`), or those whose data is dominated by one class
  (`slow_class`): Wang & Gao's intertwined data and device heterogeneity, where the clients of one label are the
  stale ones;
- `trace`: rows of a CSV file (`read_trace`), client k on row k mod rows; FedScale's device trace converts to one
  (`fedscale_trace`, `write_trace`).

`availability` is every model's chance that a client is online when called (a trace row may carry its own).

Every draw comes from `numpy.random.default_rng([seed, ..., tag])` with a tag of its own per quantity: the profiles
are a function of (seed, config) alone, and drawing them moves no other random stream of the run.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, first_line
from .protocol.constraints import Interval, InvalidParameter, Options, check_parameters

MODELS = ("identical", "uniform", "lognormal", "groups", "trace")
DEFAULTS: dict[str, Any] = {  # the `devices` block of configs/config.yaml
    "model": "identical",
    "speed": 1000.0,
    "speed_spread": 1.0,
    "bandwidth": 1.0e7,
    "bandwidth_spread": 0.0,
    "latency": 0.05,
    "availability": 1.0,
    "slow_clients": [],
    "slow_fraction": 0.0,
    "slow_class": None,
    "slow_count": None,
    "slow_factor": 10.0,
    "trace": None,
}
TRACE_COLUMNS = ("speed", "bandwidth_down", "bandwidth_up", "latency", "availability")
_SPEED_TAG, _BANDWIDTH_TAG, _SLOW_TAG, _ONLINE_TAG = 15101, 15107, 15121, 15131


@dataclass(frozen=True)
class _Number(Interval):
    """An `Interval` of real numbers that refuses NaN, and infinity unless `infinite` (an infinite speed or
    bandwidth is meaningful: that part of the call takes no time)."""

    infinite: bool = False

    def allows(self, value: Any) -> bool:
        return super().allows(value) and not math.isnan(value) and (self.infinite or math.isfinite(value))

    def __str__(self) -> str:
        text = super().__str__()
        return text if self.infinite or self.right is not None else text.replace("a number", "a finite number", 1)


_RATE = _Number(Real, 0, None, closed="neither", infinite=True)  # samples or bytes per second
_NON_NEGATIVE = _Number(Real, 0, None, closed="left")
_PROBABILITY = _Number(Real, 0, 1, closed="right")
_COLUMNS = {"speed": _RATE, "bandwidth_down": _RATE, "bandwidth_up": _RATE, "latency": _NON_NEGATIVE,
            "availability": _PROBABILITY}
_COLUMN_CONSTRAINTS = {name: [constraint] for name, constraint in _COLUMNS.items()}
_SETTINGS = {
    "model": [Options(MODELS)],
    "speed": [_RATE],
    "speed_spread": [_NON_NEGATIVE],
    "bandwidth": [_RATE],
    "bandwidth_spread": [_NON_NEGATIVE],
    "latency": [_NON_NEGATIVE],
    "availability": [_PROBABILITY],
    "slow_fraction": [_Number(Real, 0, 1, closed="left")],
    "slow_class": [Interval(Integral, 0, None, closed="left"), None],
    "slow_factor": [_Number(Real, 1, None, closed="left")],
}


@dataclass(frozen=True)
class DeviceProfile:
    """One client's device: how fast it trains, its link each way, and how often it is there."""

    speed: float  # training samples / s
    bandwidth_down: float  # bytes / s, server -> client
    bandwidth_up: float  # bytes / s, client -> server
    latency: float  # s per message, one way
    availability: float  # P(online when called)

    def __post_init__(self) -> None:
        check_parameters(_COLUMN_CONSTRAINTS, {name: getattr(self, name) for name in TRACE_COLUMNS})

    def compute_seconds(self, samples: int) -> float:
        """Seconds to train on `samples` rows (an epoch over n rows is n samples)."""
        return samples / self.speed

    def transfer_seconds(self, bytes_down: int, bytes_up: int) -> float:
        """Seconds to receive `bytes_down` and send `bytes_up`, one message each way."""
        return bytes_down / self.bandwidth_down + bytes_up / self.bandwidth_up + 2.0 * self.latency

    def duration(self, samples: int, bytes_down: int, bytes_up: int) -> float:
        """Seconds of one call: the model down, the training, the update up."""
        return self.compute_seconds(samples) + self.transfer_seconds(bytes_down, bytes_up)


@dataclass(frozen=True)
class DeviceModel:
    """The federation's devices: `profiles[k]` is partition k's."""

    profiles: tuple[DeviceProfile, ...]
    slow_partitions: tuple[int, ...]  # the groups model's slow group, sorted (empty for the other models)
    identical: bool  # devices.model == identical
    seed: int

    def profile(self, partition: int) -> DeviceProfile:
        if not 0 <= partition < len(self.profiles):
            raise IndexError(f"partition {partition} is not in 0..{len(self.profiles) - 1}")
        return self.profiles[partition]

    def online(self, partition: int, call: int) -> bool:
        """Whether the client is there for call `call` (a round, or an asynchronous dispatch): a draw of its own per
        (seed, call, partition), so the answer does not depend on which calls were asked before. Nothing is drawn
        for a client that is always there."""
        availability = self.profile(partition).availability
        if availability >= 1.0:
            return True
        return bool(np.random.default_rng([self.seed, int(call), int(partition), _ONLINE_TAG]).random() < availability)


def device_model(devices: Mapping[str, Any] | None, num_clients: int, seed: int,
                 label_counts: Any = None) -> DeviceModel:
    """The devices of `num_clients` clients under the `devices` config block (missing keys at `DEFAULTS`).

    `label_counts` (clients x classes training label counts) is needed only by `slow_class`; without it that rule
    raises ValueError. Bad values raise the ConfigError of `validate_devices`."""
    validate_devices(devices, num_clients)
    settings = {**DEFAULTS, **(devices or {})}
    model = settings["model"]
    bandwidth = float(settings["bandwidth"])
    base = DeviceProfile(float(settings["speed"]), bandwidth, bandwidth, float(settings["latency"]),
                         float(settings["availability"]))
    slow: tuple[int, ...] = ()
    if model == "identical":
        profiles = (base,) * num_clients
    elif model in ("uniform", "lognormal"):
        speeds = _spread(model, base.speed, float(settings["speed_spread"]), num_clients, [seed, _SPEED_TAG])
        links = _spread(model, bandwidth, float(settings["bandwidth_spread"]), num_clients, [seed, _BANDWIDTH_TAG])
        profiles = tuple(replace(base, speed=speed, bandwidth_down=link, bandwidth_up=link)
                         for speed, link in zip(speeds, links, strict=True))
    elif model == "groups":
        slow = _slow_group(settings, num_clients, seed, label_counts)
        factor = float(settings["slow_factor"])
        slower = replace(base, speed=base.speed / factor, bandwidth_down=bandwidth / factor,
                         bandwidth_up=bandwidth / factor)
        profiles = tuple(slower if k in slow else base for k in range(num_clients))
    else:
        rows = read_trace(settings["trace"], fallback=base)
        profiles = tuple(rows[k % len(rows)] for k in range(num_clients))
    return DeviceModel(profiles, slow, model == "identical", int(seed))


def _spread(model: str, median: float, spread: float, count: int, entropy: list[int]) -> list[float]:
    """`count` values around `median`: log-uniform within a factor 1+spread (uniform), or median*exp(spread*z)
    (lognormal). A spread of 0 gives `median` itself, exactly."""
    rng = np.random.default_rng(entropy)
    if model == "uniform":
        factors = (1.0 + spread) ** rng.uniform(-1.0, 1.0, count)
    else:
        factors = np.exp(spread * rng.standard_normal(count))
    return [float(median * factor) for factor in factors]


def _slow_group(devices: Mapping[str, Any], num_clients: int, seed: int, label_counts: Any = None) -> tuple[int, ...]:
    """The groups model's slow partitions, sorted: `slow_clients`, plus round(slow_fraction * N) drawn with the seed,
    plus the `slow_class` clients: those whose most frequent training label is that class (ties go to the smaller
    class; a client without training rows has none), or with `slow_count` the `slow_count` clients holding the most
    rows of it (ties to the smaller partition id)."""
    settings = {**DEFAULTS, **devices}
    chosen = {int(pid) for pid in settings["slow_clients"] or []}
    size = round(float(settings["slow_fraction"]) * num_clients)
    if size > 0:
        drawn = np.random.default_rng([int(seed), _SLOW_TAG]).choice(num_clients, size=size, replace=False)
        chosen |= {int(pid) for pid in drawn}
    slow_class = settings["slow_class"]
    if slow_class is not None:
        chosen |= _class_clients(int(slow_class), settings["slow_count"], num_clients, label_counts)
    if not chosen:
        raise ConfigError("devices.slow_class", slow_class,
                          "a class that is the most frequent training label of at least one client (or set "
                          "devices.slow_count, devices.slow_clients or devices.slow_fraction)")
    return tuple(sorted(chosen))


def _class_clients(slow_class: int, slow_count: int | None, num_clients: int, label_counts: Any) -> set[int]:
    if label_counts is None:
        raise ValueError("devices.slow_class needs the clients' training label counts (label_counts)")
    counts = np.asarray(label_counts)
    if counts.ndim != 2 or counts.shape[0] != num_clients:
        raise ValueError(f"label_counts must be a (num_clients={num_clients}, num_classes) array, not {counts.shape}")
    if not 0 <= slow_class < counts.shape[1]:
        raise ConfigError("devices.slow_class", slow_class, f"a class in 0..{counts.shape[1] - 1}")
    if slow_count is not None:
        ranked = sorted(range(num_clients), key=lambda k: (-counts[k, slow_class], k))
        return set(ranked[: int(slow_count)])
    return {k for k in range(num_clients) if counts[k].sum() > 0 and int(np.argmax(counts[k])) == slow_class}


# --- validation ------------------------------------------------------------------------------------------


def validate_devices(devices: Mapping[str, Any] | None, num_clients: int) -> None:
    """Refuse a bad `devices` block with a one-line ConfigError naming the key (`devices.speed`), the value and what
    is allowed; a trace file is read, so a bad row is refused here too."""
    if isinstance(num_clients, bool) or not isinstance(num_clients, Integral) or num_clients < 1:
        raise ValueError(f"num_clients must be an integer >= 1, not {num_clients!r}")
    devices = devices or {}
    if not isinstance(devices, Mapping):
        raise ConfigError("devices", devices, "a mapping of the keys " + ", ".join(DEFAULTS))
    for name, value in devices.items():
        if name not in DEFAULTS:
            raise ConfigError(f"devices.{name}", value, "a key of the devices block: " + ", ".join(DEFAULTS))
    settings = {**DEFAULTS, **devices}
    try:
        check_parameters(_SETTINGS, settings)
        check_parameters({"slow_count": [Interval(Integral, 1, num_clients, closed="both"), None]}, settings)
    except InvalidParameter as error:
        raise ConfigError(f"devices.{error.name}", error.value, error.allowed) from None
    _check_slow_clients(settings["slow_clients"], num_clients)
    _check_combinations(settings, num_clients)
    if settings["trace"] is not None:
        if not isinstance(settings["trace"], (str, Path)) or not str(settings["trace"]):
            raise ConfigError("devices.trace", settings["trace"], "null or the path of a CSV file of device rows")
        read_trace(settings["trace"])


def _check_slow_clients(value: Any, num_clients: int) -> None:
    allowed = f"a list of distinct partition ids in 0..{num_clients - 1}"
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ConfigError("devices.slow_clients", value, allowed)
    if any(isinstance(pid, bool) or not isinstance(pid, Integral) or not 0 <= pid < num_clients for pid in value):
        raise ConfigError("devices.slow_clients", value, allowed)
    if len({int(pid) for pid in value}) != len(value):
        raise ConfigError("devices.slow_clients", value, allowed)


def _check_combinations(settings: Mapping[str, Any], num_clients: int) -> None:
    """Rules across keys: each model gets the keys it reads, and the groups model a slow group."""
    model = settings["model"]
    names_slow = bool(settings["slow_clients"]) or settings["slow_fraction"] > 0 or settings["slow_class"] is not None
    if settings["slow_count"] is not None and settings["slow_class"] is None:
        raise ConfigError("devices.slow_count", settings["slow_count"], "null unless devices.slow_class is set")
    if model == "groups" and not (settings["slow_clients"] or round(settings["slow_fraction"] * num_clients) >= 1
                                  or settings["slow_class"] is not None):
        raise ConfigError("devices.slow_clients", settings["slow_clients"],
                          "at least one slow client with devices.model=groups (or devices.slow_fraction with "
                          "round(fraction * num_clients) >= 1, or devices.slow_class)")
    if model != "groups" and names_slow:
        raise ConfigError("devices.model", model, "groups when devices.slow_clients, devices.slow_fraction or "
                                                  "devices.slow_class name slow clients")
    if model == "trace" and settings["trace"] is None:
        raise ConfigError("devices.trace", None, "the path of a CSV file of device rows with devices.model=trace")
    if model != "trace" and settings["trace"] is not None:
        raise ConfigError("devices.model", model, "trace when devices.trace names a file (or set devices.trace=null)")


# --- traces ----------------------------------------------------------------------------------------------


def read_trace(path: str | Path, fallback: DeviceProfile | None = None) -> list[DeviceProfile]:
    """The device rows of a trace CSV: header `speed,bandwidth_down,bandwidth_up,latency,availability` (`speed`
    required, any other column optional and in any order), one device a row, `#` starting a comment. A column the
    file lacks, or a blank cell, takes `fallback`'s value (the config's; `DEFAULTS` when None). A bad file is a
    ConfigError of `devices.trace` naming the line and the column."""
    if fallback is None:
        link = float(DEFAULTS["bandwidth"])
        fallback = DeviceProfile(float(DEFAULTS["speed"]), link, link, float(DEFAULTS["latency"]),
                                 float(DEFAULTS["availability"]))

    def refuse(allowed: str) -> ConfigError:
        return ConfigError("devices.trace", str(path), allowed)

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise refuse(f"a readable CSV file of device rows ({first_line(error)})") from None
    lines = [(number, line.split("#", 1)[0].strip()) for number, line in enumerate(text.splitlines(), 1)]
    lines = [(number, line) for number, line in lines if line]
    if not lines:
        raise refuse("a header naming the columns " + ",".join(TRACE_COLUMNS) + " (the file has none)")
    (header_line, header_text), rows = lines[0], lines[1:]
    header = [name.strip() for name in next(csv.reader([header_text]))]
    for name in header:
        if name not in TRACE_COLUMNS or header.count(name) > 1:
            raise refuse(f"line {header_line}, column {name!r}: the header names each of "
                         f"{', '.join(TRACE_COLUMNS)} at most once")
    if "speed" not in header:
        raise refuse(f"line {header_line}: the header must name the column speed")
    if not rows:
        raise refuse("at least one device row after the header")
    profiles = []
    for number, line in rows:
        cells = [cell.strip() for cell in next(csv.reader([line]))]
        if len(cells) != len(header):
            raise refuse(f"line {number}: {len(cells)} cells where the header names {len(header)} columns")
        values = {name: getattr(fallback, name) for name in TRACE_COLUMNS}
        for name, cell in zip(header, cells, strict=True):
            if not cell and name != "speed":
                continue
            try:
                value = float(cell)
            except ValueError:
                value = None
            if value is None or not _COLUMNS[name].allows(value):
                raise refuse(f"line {number}, column {name}: {cell!r} is not {_COLUMNS[name]}")
            values[name] = value
        profiles.append(DeviceProfile(**values))
    return profiles


def write_trace(profiles: Iterable[DeviceProfile], path: str | Path,
                columns: Sequence[str] = TRACE_COLUMNS) -> Path:
    """Write `profiles` as a trace CSV that `read_trace` reads back exactly. Leaving columns out (`columns` must keep
    `speed`) lets the config's values fill them in when the trace is used."""
    columns = tuple(columns)
    if "speed" not in columns or not set(columns) <= set(TRACE_COLUMNS) or len(set(columns)) < len(columns):
        raise ValueError(f"columns must name speed and others of {', '.join(TRACE_COLUMNS)} once each: {columns}")
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as stream:
        stream.write("# fedsim device trace (docs/devices.md): samples/s, bytes/s, s, probability\n")
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(columns)
        for profile in profiles:
            writer.writerow([repr(float(getattr(profile, name))) for name in columns])
    return path


def fedscale_trace(capacities: Mapping[int, Mapping[str, float]], latency: float = DEFAULTS["latency"],
                   availability: float = DEFAULTS["availability"]) -> list[DeviceProfile]:
    """Device rows from FedScale's device trace (the dict its `client_device_capacity` pickle holds, which the user
    loads: fedsim unpickles no file), in increasing client id: client -> {"computation": ms per sample,
    "communication": kbit/s}. speed = 1000 / computation samples/s; bandwidth = communication * 1000 / 8 bytes/s,
    the same both ways. FedScale's trace has neither latency nor availability: they are the arguments."""
    profiles = []
    for client in sorted(capacities):
        capacity = capacities[client]
        try:
            computation, communication = float(capacity["computation"]), float(capacity["communication"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"FedScale client {client}: needs numbers 'computation' and 'communication', "
                             f"got {capacity!r}") from None
        if not (computation > 0 and communication > 0 and math.isfinite(computation)
                and math.isfinite(communication)):
            raise ValueError(f"FedScale client {client}: computation and communication must be finite numbers > 0, "
                             f"got {capacity!r}")
        link = communication * 1000.0 / 8.0
        profiles.append(DeviceProfile(1000.0 / computation, link, link, float(latency), float(availability)))
    return profiles
