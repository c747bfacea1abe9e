"""Composing the experiment config with Hydra, and refusing bad values before any work starts.

Every refusal is a `ConfigError` naming the key, the value and what is allowed; the CLI prints it as one line and
exits with code 2.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from . import config_dir
from .errors import ConfigError, FedsimError
from .protocol.capabilities import StrategyTraits, strategy_traits
from .protocol.constraints import InvalidParameter, check_parameters, parameter_constraints
from .protocol.keys import CLIENT_OPTIMIZER_FIELDS, CLIENT_OPTIMIZER_KEY

GROUPS = ("dataset", "partition", "model", "strategy", "engine", "compression")
# An experiment written before compression existed (a run folder's config.yaml) compresses nothing.
NO_COMPRESSION = {"_target_": "fedsim.compression.NoCompression", "name": "none", "error_feedback": False}
DEFAULT_PROXY_SIZE = 200
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEVICES = ("auto", "cpu", "cuda")
LOCAL_DEBIASING = ("none", "reweighing")


def group_options(group: str, root: Path | None = None) -> list[str]:
    """The options of a config group: the YAML files in configs/<group>/."""
    folder = (root or config_dir()) / group
    return sorted(path.stem for path in folder.glob("*.yaml"))


_GROUP_OVERRIDE = re.compile(r"^[+~]?(?P<group>[a-z_]+)(@[^=]*)?=(?P<value>.*)$")


def check_group_overrides(overrides: Sequence[str], root: Path | None = None) -> None:
    """Refuse `group=option` overrides naming an option that does not exist (sweeps `a,b` are checked each)."""
    for override in overrides:
        match = _GROUP_OVERRIDE.match(override)
        if not match or match["group"] not in (*GROUPS, "tracking") or "(" in match["value"]:
            continue
        options = group_options(match["group"], root)
        for value in match["value"].split(","):
            if value not in options:
                raise ConfigError(match["group"], value, f"one of {', '.join(options)}")


def _group_choices(cfg: DictConfig) -> dict[str, str] | None:
    """The config-group options the run was composed from (`strategy=fedprox` gives "fedprox"), from the Hydra
    section of a composed config or from the running Hydra app; None outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if "hydra" in cfg:
        choices = cfg.hydra.runtime.choices
    elif HydraConfig.initialized():
        choices = HydraConfig.get().runtime.choices
    else:
        return None
    return {group: str(choices[group]) for group in GROUPS if group in choices}


def to_experiment(cfg: DictConfig) -> dict[str, Any]:
    """The resolved experiment as plain data (no Hydra section); a missing mandatory value is a ConfigError.

    `choices` records the option of each config group, so that every command (a run, `resume`, `compare`,
    `deploy`) names a run's choices the same way: the file names in configs/<group>/."""
    choices = _group_choices(cfg)
    if "hydra" in cfg:
        cfg = cfg.copy()
        with open_dict(cfg):
            del cfg["hydra"]  # its interpolations need a running Hydra app
    try:
        container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as error:
        key = getattr(error, "full_key", None) or "?"
        raise ConfigError(str(key), "???", "this value is required; set it on the command line") from None
    except OmegaConfBaseException as error:
        raise FedsimError(f"config could not be resolved: {str(error).splitlines()[0]}") from None
    assert isinstance(container, dict)
    container.pop("hydra", None)
    if choices is not None:
        container["choices"] = choices
    return resolve_auto_values(container)


def _strategy_traits(experiment: Mapping[str, Any]) -> StrategyTraits:
    """The declarations of the class `strategy._target_` names; a ConfigError if it cannot be imported."""
    from .build import traits_of  # imports torch: not before a config is resolved

    try:
        return traits_of(experiment)
    except Exception:  # pylint: disable=broad-exception-caught
        target = experiment["strategy"].get("_target_")
        raise ConfigError("strategy._target_", target, "an importable Flower Strategy class") from None


def resolve_auto_values(experiment: Mapping[str, Any]) -> dict[str, Any]:
    """A copy with `auto` settings replaced by concrete values (the caller's mapping is left as it is); clients
    receive the resolved experiment."""
    server = dict(experiment.get("server", {}))
    if server.get("proxy_size", 0) == "auto":
        server["proxy_size"] = DEFAULT_PROXY_SIZE if _strategy_traits(experiment).requires_server_data else 0
    return {**experiment, "server": server, "compression": dict(experiment.get("compression") or NO_COMPRESSION)}


def attacker_count(attack: Any, num_clients: Any, seed: Any) -> int:
    """How many clients the experiment's `attack.*` makes attackers (0 without an attack): the `${attackers:...}`
    resolver, which gives the robust rules' f (`num_malicious_nodes`) its default."""
    from .attacks import attackers

    config = OmegaConf.to_container(attack, resolve=True) if isinstance(attack, DictConfig) else dict(attack or {})
    try:
        return len(attackers({"attack": config, "num_clients": int(num_clients), "seed": int(seed)}))
    except (TypeError, ValueError):  # a bad attack setting: validation names it in one line
        return 0


OmegaConf.register_new_resolver("attackers", attacker_count, replace=True)


def compose_experiment(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Compose configs/config.yaml with Hydra overrides, as the CLI does, for use from Python and tests."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    check_group_overrides(overrides)
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
            cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    except HydraException as error:
        lines = str(error).strip().splitlines()
        if lines and lines[0].startswith("Could not override"):
            key = lines[0].split("'")[1] if "'" in lines[0] else lines[0]
            raise FedsimError(f"{key} is not a fedsim config key (see `fedsim --cfg job` for all keys)") from None
        raise FedsimError(" ".join(lines[:2])) from None
    return to_experiment(cfg)


def sweep_jobs(overrides: Sequence[str]) -> list[list[str]]:
    """The jobs of a Hydra multirun, in Hydra's order: each job's overrides, with every sweep (`a=1,2`,
    `a=range(0,3)`, `a=choice(x,y)`) replaced by one of its values. `hydra.*` overrides are left out."""
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as error:
        raise FedsimError(str(error).strip().splitlines()[0]) from None
    axes: list[list[str]] = []
    for override in parsed:
        if override.get_key_element().lstrip("+~").startswith("hydra."):
            continue
        if override.is_sweep_override():
            key = override.get_key_element()
            axes.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            axes.append([override.input_line or ""])
    return [list(job) for job in itertools.product(*axes)]


def validate_sweep(overrides: Sequence[str]) -> None:
    """Compose and validate every job of a multirun before the first one starts: the first bad one is a
    FedsimError naming the job and its overrides."""
    jobs = sweep_jobs(overrides)
    for number, job in enumerate(jobs):
        try:
            validate(compose_experiment(job))
        except FedsimError as error:
            swept = [override for override in job if override not in overrides] or job
            raise FedsimError(f"sweep job {number} of {len(jobs)} ({' '.join(swept)}): {error}") from None


# --- value checks ------------------------------------------------------------------------------------------


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(key, value, "must be a number")
    return float(value)


def _integer(key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(key, value, f"must be an integer >= {minimum}")
    return value


def _in_range(key: str, value: Any, low: float, high: float, low_open: bool = False, high_open: bool = False) -> float:
    number = _number(key, value)
    too_low = number <= low if low_open else number < low
    too_high = number >= high if high_open else number > high
    if too_low or too_high:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        raise ConfigError(key, value, f"must be in {left}{low:g}, {high:g}{right}")
    return number


def _positive(key: str, value: Any) -> float:
    number = _number(key, value)
    if number <= 0:
        raise ConfigError(key, value, "must be > 0")
    return number


def _non_negative(key: str, value: Any) -> float:
    number = _number(key, value)
    if number < 0:
        raise ConfigError(key, value, "must be >= 0")
    return number


def _choice(key: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ConfigError(key, value, f"one of {', '.join(allowed)}")


def _check_declared(key: str, cls: type, constraints: Mapping[str, Any], arguments: Mapping[str, Any]) -> None:
    """The constraints class `cls` declares on its arguments, then its rules across arguments (a `check_arguments`
    classmethod, where it declares one); the first `InvalidParameter` is the one-line ConfigError of `key.<name>`."""
    try:
        check_parameters(constraints, arguments)
        across = getattr(cls, "check_arguments", None)
        if callable(across):
            across(arguments)
    except InvalidParameter as error:
        raise ConfigError(f"{key}.{error.name}", error.value, error.allowed) from None


def _check_known_arguments(key: str, cls: type, arguments: Mapping[str, Any]) -> None:
    """Each argument must be one `cls` takes: a misspelt codec setting is refused before any work."""
    import inspect

    accepted = [name for name in inspect.signature(cls.__init__).parameters if name != "self"]
    for name, value in arguments.items():
        if name not in accepted:
            raise ConfigError(f"{key}.{name}", value, f"no such setting of {cls.__name__}; it takes "
                                                      f"{', '.join(accepted) or 'none'}")


def _validate_client_optimizer(strategy: Mapping[str, Any]) -> None:
    """The block naming the client optimiser of the strategy's paper (`fedsim.build.client_optimizer`)."""
    optimizer = strategy.get(CLIENT_OPTIMIZER_KEY) or {}
    if not isinstance(optimizer, Mapping):
        raise ConfigError("strategy.client_optimizer", optimizer, "a mapping with momentum and weight_decay, or null")
    for name in optimizer:
        if name not in CLIENT_OPTIMIZER_FIELDS:
            raise ConfigError(f"strategy.client_optimizer.{name}", optimizer[name], "only momentum and weight_decay")
    if "momentum" in optimizer:
        _in_range("strategy.client_optimizer.momentum", optimizer["momentum"], 0, 1, high_open=True)
    if "weight_decay" in optimizer:
        _non_negative("strategy.client_optimizer.weight_decay", optimizer["weight_decay"])


def _validate_cohort(strategy: Mapping[str, Any], num_clients: int) -> None:
    """Flower's samplers wait until `min_*_nodes` nodes are there: asking for more than exist would hang the run."""
    for name in ("min_train_nodes", "min_evaluate_nodes", "min_available_nodes"):
        if name in strategy:
            value = _integer(f"strategy.{name}", strategy[name], 0)
            if value > num_clients:
                raise ConfigError(f"strategy.{name}", value,
                                  f"at most num_clients ({num_clients}): a larger cohort never forms")


def _strategy_name(experiment: Mapping[str, Any]) -> str:
    return str(experiment["strategy"]["_target_"]).rsplit(".", 1)[-1]


def _validate_stragglers(experiment: Mapping[str, Any], traits: StrategyTraits) -> None:
    fraction = _in_range("stragglers.fraction", experiment.get("stragglers", {}).get("fraction", 0.0), 0, 1,
                         high_open=True)
    if fraction > 0 and not traits.supports_stragglers:
        raise ConfigError("stragglers.fraction", fraction,
                          f"0 with strategy {_strategy_name(experiment)}, which does not declare supports_stragglers")


def _validate_clock(experiment: Mapping[str, Any], traits: StrategyTraits, num_clients: int) -> None:
    """The device model (`fedsim.devices`), the synchronous deadline and an asynchronous strategy's concurrency."""
    from .devices import validate_devices

    validate_devices(experiment.get("devices") or {}, num_clients)
    deadline = experiment["server"].get("deadline")
    if deadline is not None:
        _positive("server.deadline", deadline)
        if traits.asynchronous:
            raise ConfigError("server.deadline", deadline,
                              f"null with strategy {_strategy_name(experiment)}: an asynchronous run has no rounds "
                              "to cut off")
    if traits.asynchronous:
        concurrency = experiment["strategy"].get("concurrency", 1)
        active = num_clients - len(experiment.get("exclude_clients") or [])
        if isinstance(concurrency, int) and not isinstance(concurrency, bool) and concurrency > active:
            raise ConfigError("strategy.concurrency", concurrency,
                              f"at most the clients that take part ({active}): C clients train at once")


def _validate_attack(attack: Mapping[str, Any], num_clients: int) -> None:
    """`attack.*`: a known kind, attackers named when it is set, and that kind's settings (`fedsim.attacks`)."""
    from .attacks import KINDS, parse_attack

    kind = attack.get("kind", "none")
    _choice("attack.kind", kind, ("none", *KINDS))
    clients = attack.get("clients") or []
    _partition_ids("attack.clients", clients, num_clients, leave_one=False)
    fraction = _in_range("attack.fraction", attack.get("fraction", 0.0), 0, 1, high_open=True)
    if kind == "none":
        if clients or fraction > 0:
            raise ConfigError("attack.kind", kind, f"one of {', '.join(KINDS)} when attack.clients or attack.fraction "
                                                   "names attackers")
        return
    if not clients and round(fraction * num_clients) == 0:
        raise ConfigError("attack.clients", clients, f"at least one attacker for attack.kind={kind} "
                                                     "(or attack.fraction with round(fraction * num_clients) >= 1)")
    settings = {key: value for key, value in attack.items() if key not in ("kind", "clients", "fraction")}
    try:
        parse_attack(kind, settings, num_clients, max(len(clients), 1))
    except InvalidParameter as error:
        raise ConfigError(f"attack.{error.name}", error.value, error.allowed) from None


def sensitive_datasets() -> list[str]:
    """The `dataset` options whose loader declares rows with a sensitive attribute."""
    from .build import locate

    folder = config_dir() / "dataset"
    targets = {option: OmegaConf.load(folder / f"{option}.yaml").get("_target_") for option in group_options("dataset")}
    return [option for option, target in targets.items()
            if locate(str(target)).has_sensitive_attribute]


def _validate_sensitive_attribute(experiment: Mapping[str, Any], traits: StrategyTraits, loader: type) -> None:
    """A strategy or local debiasing that needs each row's sensitive attribute, on a data set whose loader declares
    one (`has_sensitive_attribute`)."""
    debiasing = experiment["client"].get("local_debiasing", "none")
    _choice("client.local_debiasing", debiasing, LOCAL_DEBIASING)
    needs = [f"strategy {_strategy_name(experiment)}"] if traits.requires_sensitive_attribute else []
    needs += [f"client.local_debiasing={debiasing}"] if debiasing != "none" else []
    if needs and not loader.has_sensitive_attribute:
        allowed = f"{needs[0]} needs a sensitive attribute: one of {', '.join(sensitive_datasets())}"
        raise ConfigError("dataset", experiment["dataset"].get("name"), allowed)


def _partition_ids(key: str, value: Any, num_clients: int, leave_one: bool) -> None:
    """A list of distinct partition ids; with `leave_one`, it may not name every client."""
    allowed = (f"a list of distinct partition ids in 0..{num_clients - 1}"
               + (", leaving at least one client" if leave_one else ""))
    if not isinstance(value, list) or len(set(map(str, value))) != len(value) or len(value) > num_clients - leave_one:
        raise ConfigError(key, value, allowed)
    for pid in value:
        if isinstance(pid, bool) or not isinstance(pid, int) or not 0 <= pid < num_clients:
            raise ConfigError(key, value, allowed)


TARGET_BASES = {  # group: (module, class) that its `_target_` must subclass
    "strategy": ("flwr.serverapp.strategy", "Strategy"),
    "partition": ("flwr_datasets.partitioner", "Partitioner"),
    "model": ("torch.nn", "Module"),
    "dataset": ("fedsim.data.base", "DatasetLoader"),
    "engine": ("fedsim.engines.base", "Engine"),
    "compression": ("fedsim.compression.base", "Compressor"),
}


def _nested_targets(value: Any, path: str) -> list[tuple[str, Any]]:
    if isinstance(value, Mapping):
        found = [(path, value["_target_"])] if "_target_" in value else []
        return found + [key for k, v in value.items() for key in _nested_targets(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [key for i, v in enumerate(value) for key in _nested_targets(v, f"{path}[{i}]")]
    return []


def _validate_targets(experiment: Mapping[str, Any]) -> dict[str, type]:
    """The class each group's `_target_` names, which must be a class of its kind (`TARGET_BASES`: a Flower
    Strategy, a flwr-datasets Partitioner, a torch Module, a fedsim DatasetLoader or Engine); no other key names
    code to build. A config is data (a run folder's `config.yaml` may come from someone else, for `fedsim resume`):
    it cannot make fedsim call anything else (`subprocess.Popen`, `os.system`), at the top or nested."""
    import importlib

    from .build import locate

    for group, entry in experiment.items():
        if group in TARGET_BASES:
            inner = [key for k, v in entry.items() if k != "_target_" for key in _nested_targets(v, f"{group}.{k}")]
        else:
            inner = _nested_targets(entry, str(group))
        if inner:
            named = ", ".join(f"{kind}._target_" for kind in TARGET_BASES)
            raise ConfigError(f"{inner[0][0]}._target_", inner[0][1], f"nothing: only {named} name a class")
    classes = {}
    for group, (module, name) in TARGET_BASES.items():
        target = experiment[group].get("_target_")
        base = getattr(importlib.import_module(module), name)
        allowed = f"an importable subclass of {module}.{name}"
        try:
            cls = locate(str(target))
        except Exception:  # pylint: disable=broad-exception-caught
            raise ConfigError(f"{group}._target_", target, allowed) from None
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise ConfigError(f"{group}._target_", target, allowed)
        classes[group] = cls
    return classes


def _validate_declared(experiment: Mapping[str, Any], classes: Mapping[str, type], traits: StrategyTraits) -> None:
    """Each built group's arguments, by what its class declares; `num_partitions` is every partitioner's."""
    from .engines import engine_arguments
    from .partitions.flower_constraints import partitioner_constraints

    def arguments(group: str, aside: tuple[str, ...] = ()) -> dict[str, Any]:
        return {key: value for key, value in experiment[group].items() if key not in ("_target_", *aside)}

    num_clients, partition = experiment["num_clients"], experiment["partition"]
    if "num_partitions" in partition and partition["num_partitions"] != num_clients:
        raise ConfigError("partition.num_partitions", partition["num_partitions"],
                          f"must equal num_clients={num_clients}")
    _check_declared("strategy", classes["strategy"], traits.parameter_constraints,
                    arguments("strategy", (CLIENT_OPTIMIZER_KEY,)))
    _check_declared("partition", classes["partition"], partitioner_constraints(classes["partition"]),
                    arguments("partition"))
    _check_declared("dataset", classes["dataset"], parameter_constraints(classes["dataset"]), arguments("dataset"))
    _check_declared("engine", classes["engine"], parameter_constraints(classes["engine"]),
                    engine_arguments(experiment["engine"]))
    _check_declared("compression", classes["compression"], parameter_constraints(classes["compression"]),
                    arguments("compression", ("name", "error_feedback")))
    _check_known_arguments("compression", classes["compression"], arguments("compression", ("name", "error_feedback")))
    feedback = experiment["compression"].get("error_feedback", False)
    if not isinstance(feedback, bool):
        raise ConfigError("compression.error_feedback", feedback, "true or false")
    if feedback and classes["compression"].lossless:
        raise ConfigError("compression.error_feedback", feedback,
                          f"false: compression={experiment['compression'].get('name')} loses nothing to feed back")


def validate(experiment: Mapping[str, Any]) -> None:
    """Check every value the run will use; raise a ConfigError on the first bad one."""
    import torch

    classes = _validate_targets(experiment)
    traits = strategy_traits(classes["strategy"])
    _integer("seed", experiment["seed"], 0)
    num_clients = _integer("num_clients", experiment["num_clients"], 1)
    _integer("num_rounds", experiment["num_rounds"], 1)
    _in_range("fraction_train", experiment["fraction_train"], 0, 1, low_open=True)
    fraction_evaluate = _in_range("fraction_evaluate", experiment["fraction_evaluate"], 0, 1)
    _choice("device", experiment["device"], DEVICES)
    if experiment["device"] == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "cuda", "no CUDA device is visible here; use device=auto or device=cpu")
    _choice("log_level", str(experiment.get("log_level", "WARNING")).upper(), LOG_LEVELS)
    from .tracking import validate_tracking  # imports the chosen tracker's library: a missing one stops here

    validate_tracking(experiment)

    client = experiment["client"]
    _integer("client.local_epochs", client["local_epochs"], 1)
    _integer("client.batch_size", client["batch_size"], 1)
    _positive("client.lr", client["lr"])
    _in_range("client.momentum", client["momentum"], 0, 1, high_open=True)
    _non_negative("client.weight_decay", client["weight_decay"])
    _non_negative("client.proximal_mu", client["proximal_mu"])
    val_fraction = _in_range("client.val_fraction", client["val_fraction"], 0, 1, high_open=True)
    if fraction_evaluate > 0 and val_fraction == 0:
        raise ConfigError("client.val_fraction", 0, "must be > 0 while fraction_evaluate > 0 (clients evaluate on it)")

    _partition_ids("exclude_clients", experiment.get("exclude_clients") or [], num_clients, leave_one=True)
    noise = experiment.get("label_noise") or {}
    _partition_ids("label_noise.clients", noise.get("clients") or [], num_clients, leave_one=False)
    _in_range("label_noise.rate", noise.get("rate", 0.0), 0, 1)
    _choice("label_noise.profile", noise.get("profile", "constant"), ("constant", "linear"))  # fedsim.data.noise
    feature_noise = experiment.get("feature_noise") or {}
    _partition_ids("feature_noise.clients", feature_noise.get("clients") or [], num_clients, leave_one=False)
    _non_negative("feature_noise.std", feature_noise.get("std", 0.0))
    _validate_attack(experiment.get("attack") or {}, num_clients)
    _validate_stragglers(experiment, traits)
    server = experiment["server"]
    proxy_size = _integer("server.proxy_size", server.get("proxy_size", 0), 0)
    if proxy_size == 0 and traits.requires_server_data:
        raise ConfigError("server.proxy_size", 0,
                          f"strategy {_strategy_name(experiment)} learns on a server proxy set: "
                          f"use e.g. {DEFAULT_PROXY_SIZE}")
    _integer("server.eval_batch_size", server["eval_batch_size"], 1)
    _positive("server.round_timeout", server["round_timeout"])
    bound = server.get("max_update_norm", "auto")
    if (bound is not None and bound != "auto"
            and (isinstance(bound, bool) or not isinstance(bound, (int, float)) or bound <= 0)):
        raise ConfigError("server.max_update_norm", bound, "auto, null or a number > 0")
    if _number("server.update_norm_factor", server.get("update_norm_factor", 100.0)) <= 1:
        raise ConfigError("server.update_norm_factor", server["update_norm_factor"],
                          "must be > 1 (a multiple of the round's median update norm)")
    if _integer("server.min_valid_replies", server.get("min_valid_replies", 1), 1) > num_clients:
        raise ConfigError("server.min_valid_replies", server["min_valid_replies"],
                          f"at most num_clients ({num_clients})")
    _integer("server.checkpoint_every", server.get("checkpoint_every", 1), 0)
    _validate_clock(experiment, traits, num_clients)
    faults = experiment.get("faults") or {}
    for key in ("crash_rate", "nan_rate", "slow_rate"):
        _in_range(f"faults.{key}", faults.get(key, 0.0), 0, 1)
    _non_negative("faults.slow_seconds", faults.get("slow_seconds", 0.0))

    _validate_client_optimizer(experiment["strategy"])
    _validate_cohort(experiment["strategy"], num_clients)
    _validate_sensitive_attribute(experiment, traits, classes["dataset"])
    _validate_declared(experiment, classes, traits)
