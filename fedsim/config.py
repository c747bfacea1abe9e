"""Composing the experiment config with Hydra, and refusing bad values before any work starts.

Every refusal is a `ConfigError` naming the key, the value and what is allowed; the CLI prints it as one line and
exits with code 2.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from . import config_dir
from .errors import ConfigError, FedsimError

GROUPS = ("dataset", "partition", "model", "strategy", "engine")
DEFAULT_PROXY_SIZE = 200
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEVICES = ("auto", "cpu", "cuda")
LOCAL_DEBIASING = ("none", "reweighing")
SENSITIVE_DATASETS = ("fair_synthetic", "adult")  # data sets with a binary sensitive attribute (FairFed, SPD/EOD)


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


def strategy_class(experiment: Mapping[str, Any]) -> type:
    """The class `strategy._target_` names; a ConfigError if it cannot be imported."""
    import hydra.utils

    target = experiment["strategy"].get("_target_")
    try:
        return hydra.utils.get_class(str(target))
    except Exception:  # pylint: disable=broad-exception-caught
        raise ConfigError("strategy._target_", target, "an importable Flower Strategy class") from None


def needs_server_data(experiment: Mapping[str, Any]) -> bool:
    """Whether the strategy learns on a server-side proxy set (FedLAW)."""
    return bool(getattr(strategy_class(experiment), "requires_server_data", False))


def resolve_auto_values(experiment: Mapping[str, Any]) -> dict[str, Any]:
    """A copy with `auto` settings replaced by concrete values (the caller's mapping is left as it is); clients
    receive the resolved experiment."""
    server = dict(experiment.get("server", {}))
    if server.get("proxy_size", 0) == "auto":
        server["proxy_size"] = DEFAULT_PROXY_SIZE if needs_server_data(experiment) else 0
    return {**experiment, "server": server}


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


def _auto_or_count(key: str, value: Any) -> None:
    if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(key, value, "auto or an integer >= 1")


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


def _validate_partition(partition: Mapping[str, Any], num_clients: int) -> None:
    if "alpha" in partition:
        alphas = partition["alpha"] if isinstance(partition["alpha"], list) else [partition["alpha"]]
        for alpha in alphas:
            _positive("partition.alpha", alpha)
        if isinstance(partition["alpha"], list) and len(alphas) != num_clients:
            raise ConfigError("partition.alpha", partition["alpha"], f"a number, or a list of num_clients={num_clients} numbers")
    if "num_partitions" in partition and partition["num_partitions"] != num_clients:
        raise ConfigError("partition.num_partitions", partition["num_partitions"], f"must equal num_clients={num_clients}")
    if "min_partition_size" in partition:
        _integer("partition.min_partition_size", partition["min_partition_size"], 0)
    if partition.get("num_shards_per_partition") is not None:
        _integer("partition.num_shards_per_partition", partition["num_shards_per_partition"], 1)
    if partition.get("shard_size") is not None:
        _integer("partition.shard_size", partition["shard_size"], 1)
    if "sigma" in partition:
        _positive("partition.sigma", partition["sigma"])
    if "distribution" in partition:
        from fedsim.partitions.quantity import DISTRIBUTIONS

        _choice("partition.distribution", partition["distribution"], DISTRIBUTIONS)
    if "num_classes_per_partition" in partition:
        _integer("partition.num_classes_per_partition", partition["num_classes_per_partition"], 1)
    _validate_feature_partition(partition)


def _validate_feature_partition(partition: Mapping[str, Any]) -> None:
    """Keys of the embedding and semantic partitions."""
    from fedsim.partitions.cluster_mixture import SIZE_RULES
    from fedsim.partitions.embedding import BY_MODES

    if "num_clusters" in partition:
        _integer("partition.num_clusters", partition["num_clusters"], 1)
    if partition.get("pca_components") is not None:
        _integer("partition.pca_components", partition["pca_components"], 1)
    if "by" in partition:
        _choice("partition.by", partition["by"], BY_MODES)
    if "size_rule" in partition:
        _choice("partition.size_rule", partition["size_rule"], SIZE_RULES)
    if "max_retries" in partition:
        _integer("partition.max_retries", partition["max_retries"], 1)
    if "covariance_type" in partition:
        _choice("partition.covariance_type", partition["covariance_type"], ("full", "tied", "diag", "spherical"))
    if "reg_covar" in partition:
        _positive("partition.reg_covar", partition["reg_covar"])
    if "encoder" in partition:
        from fedsim.partitions.encoders import resolve_encoder

        try:
            resolve_encoder(partition["encoder"])
        except ValueError:
            allowed = "pca, torchvision:<model>, timm:<model>, sentence-transformers:<model> or model:<run folder>"
            raise ConfigError("partition.encoder", partition["encoder"], allowed) from None


def _validate_strategy(strategy: Mapping[str, Any]) -> None:
    """Each strategy key that is present, checked by the rule for that key (keys are shared across strategies)."""
    from fedsim.fairness import METRICS
    from fedsim.strategies.fedce import MODES
    from fedsim.strategies.feddisco import MEASURES, TARGETS
    from fedsim.strategies.stragglers import STRAGGLER_MODES

    def one_of(allowed: Sequence[str]) -> Callable[[str, Any], None]:
        return lambda key, value: _choice(key, value, allowed)

    def integer_from(minimum: int) -> Callable[[str, Any], int]:
        return lambda key, value: _integer(key, value, minimum)

    checks: dict[str, Callable[[str, Any], Any]] = {
        "proximal_mu": _non_negative, "a": _non_negative, "b": _number, "q": _non_negative, "beta": _non_negative,
        "server_lr": lambda key, value: value == "auto" or _positive(key, value), "server_epochs": integer_from(0),
        "batch_size": integer_from(1), "lr_step_epochs": integer_from(1),
        "lr_step_factor": lambda key, value: _in_range(key, value, 0, 1, low_open=True),
        "straggler_mode": one_of(STRAGGLER_MODES), "measure": one_of(MEASURES), "target": one_of(TARGETS),
        "mode": one_of(MODES), "metric": one_of(METRICS),
    }
    for name, check in checks.items():
        if name in strategy:
            check(f"strategy.{name}", strategy[name])
    optimizer = strategy.get("client_optimizer") or {}  # the paper's client optimiser (fedsim.experiment.client_optimizer)
    if not isinstance(optimizer, Mapping):
        raise ConfigError("strategy.client_optimizer", optimizer, "a mapping with momentum and weight_decay, or null")
    for name in optimizer:
        if name not in ("momentum", "weight_decay"):
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
                raise ConfigError(f"strategy.{name}", value, f"at most num_clients ({num_clients}): a larger cohort never forms")


def _validate_dataset(dataset: Mapping[str, Any]) -> None:
    for key in ("test_fraction", "train_fraction"):
        if key in dataset:
            _in_range(f"dataset.{key}", dataset[key], 0, 1, low_open=True, high_open=True)
    if dataset.get("name") == "synthetic":
        _non_negative("dataset.alpha", dataset["alpha"])
        _non_negative("dataset.beta", dataset["beta"])
        _integer("dataset.num_users", dataset["num_users"], 1)
    if dataset.get("name") == "random" and dataset.get("source") == "builtin":
        _integer("dataset.num_samples", dataset["num_samples"], 1)
        _integer("dataset.num_classes", dataset["num_classes"], 2)
        _integer("dataset.test_samples", dataset["test_samples"], 1)
        shape = dataset["shape"]
        if not isinstance(shape, list) or not shape or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in shape):
            raise ConfigError("dataset.shape", shape, "a list of positive integers, e.g. [1, 28, 28]")
    if dataset.get("name") == "fair_synthetic":
        _integer("dataset.num_samples", dataset["num_samples"], 2)
        _integer("dataset.dim", dataset["dim"], 2)
        _in_range("dataset.correlation", dataset["correlation"], 0, 1, high_open=True)
        _in_range("dataset.sensitive_share", dataset["sensitive_share"], 0, 1, low_open=True, high_open=True)
        _non_negative("dataset.signal", dataset["signal"])
        _non_negative("dataset.leak", dataset["leak"])


def _partition_ids(key: str, value: Any, num_clients: int, leave_one: bool) -> None:
    """A list of distinct partition ids; with `leave_one`, it may not name every client."""
    allowed = f"a list of distinct partition ids in 0..{num_clients - 1}" + (", leaving at least one client" if leave_one else "")
    if not isinstance(value, list) or len(set(map(str, value))) != len(value) or len(value) > num_clients - leave_one:
        raise ConfigError(key, value, allowed)
    for pid in value:
        if isinstance(pid, bool) or not isinstance(pid, int) or not 0 <= pid < num_clients:
            raise ConfigError(key, value, allowed)


TARGET_BASES = {  # group: (module, class) that its `_target_` must subclass
    "strategy": ("flwr.serverapp.strategy", "Strategy"),
    "partition": ("flwr_datasets.partitioner", "Partitioner"),
    "model": ("torch.nn", "Module"),
}


def _validate_targets(experiment: Mapping[str, Any]) -> None:
    """Only three keys name code to build, and each must name a class of its kind: `strategy._target_` a Flower
    Strategy, `partition._target_` a flwr-datasets Partitioner, `model._target_` a torch Module. A config is data
    (a run folder's `config.yaml` may come from someone else, for `fedsim resume`): it cannot make fedsim call
    anything else (`subprocess.Popen`, `os.system`), at the top or nested."""
    import importlib

    def locate(dotted: str) -> Any:
        parts = dotted.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            try:
                found = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            for part in parts[cut:]:
                found = getattr(found, part)
            return found
        raise ImportError(dotted)

    def nested_targets(value: Any, path: str) -> list[tuple[str, Any]]:
        if isinstance(value, Mapping):
            found = [(path, value["_target_"])] if "_target_" in value else []
            return found + [key for k, v in value.items() for key in nested_targets(v, f"{path}.{k}")]
        if isinstance(value, list):
            return [key for i, v in enumerate(value) for key in nested_targets(v, f"{path}[{i}]")]
        return []

    for group, entry in experiment.items():
        if group in TARGET_BASES:
            inner = [key for k, v in entry.items() if k != "_target_" for key in nested_targets(v, f"{group}.{k}")]
        else:
            inner = nested_targets(entry, str(group))
        if inner:
            raise ConfigError(f"{inner[0][0]}._target_", inner[0][1],
                              "nothing: only strategy._target_, partition._target_ and model._target_ name a class")
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


def validate(experiment: Mapping[str, Any]) -> None:
    """Check every value the run will use; raise a ConfigError on the first bad one."""
    import torch

    _validate_targets(experiment)
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
    feature_noise = experiment.get("feature_noise") or {}
    _partition_ids("feature_noise.clients", feature_noise.get("clients") or [], num_clients, leave_one=False)
    _non_negative("feature_noise.std", feature_noise.get("std", 0.0))
    _in_range("stragglers.fraction", experiment.get("stragglers", {}).get("fraction", 0.0), 0, 1, high_open=True)
    server = experiment["server"]
    proxy_size = _integer("server.proxy_size", server.get("proxy_size", 0), 0)
    if proxy_size == 0 and needs_server_data(experiment):
        raise ConfigError("server.proxy_size", 0, f"strategy {experiment['strategy']['_target_'].rsplit('.', 1)[-1]} learns on a server proxy set: use e.g. {DEFAULT_PROXY_SIZE}")
    _integer("server.eval_batch_size", server["eval_batch_size"], 1)
    _positive("server.round_timeout", server["round_timeout"])
    bound = server.get("max_update_norm", "auto")
    if bound is not None and bound != "auto" and (isinstance(bound, bool) or not isinstance(bound, (int, float)) or bound <= 0):
        raise ConfigError("server.max_update_norm", bound, "auto, null or a number > 0")
    if _number("server.update_norm_factor", server.get("update_norm_factor", 100.0)) <= 1:
        raise ConfigError("server.update_norm_factor", server["update_norm_factor"], "must be > 1 (a multiple of the round's median update norm)")
    if _integer("server.min_valid_replies", server.get("min_valid_replies", 1), 1) > num_clients:
        raise ConfigError("server.min_valid_replies", server["min_valid_replies"], f"at most num_clients ({num_clients})")
    _integer("server.checkpoint_every", server.get("checkpoint_every", 1), 0)
    faults = experiment.get("faults") or {}
    for key in ("crash_rate", "nan_rate", "slow_rate"):
        _in_range(f"faults.{key}", faults.get(key, 0.0), 0, 1)
    _non_negative("faults.slow_seconds", faults.get("slow_seconds", 0.0))

    _validate_strategy(experiment["strategy"])
    _validate_cohort(experiment["strategy"], num_clients)
    dataset_name = experiment["dataset"].get("name")
    if str(experiment["strategy"].get("_target_", "")).endswith(".FairFed") and dataset_name not in SENSITIVE_DATASETS:
        allowed = f"strategy=fairfed needs a sensitive attribute: one of {', '.join(SENSITIVE_DATASETS)}"
        raise ConfigError("dataset", dataset_name, allowed)
    debiasing = client.get("local_debiasing", "none")
    _choice("client.local_debiasing", debiasing, LOCAL_DEBIASING)
    if debiasing != "none" and dataset_name not in SENSITIVE_DATASETS:
        allowed = f"client.local_debiasing={debiasing} needs a sensitive attribute: one of {', '.join(SENSITIVE_DATASETS)}"
        raise ConfigError("dataset", dataset_name, allowed)
    _validate_partition(experiment["partition"], num_clients)
    _validate_dataset(experiment["dataset"])

    engine = experiment["engine"]
    if engine.get("name") == "flower":
        from .engines.ray_resources import validate_flower_engine

        validate_flower_engine(engine)
    if engine.get("name") == "inprocess":
        _auto_or_count("engine.workers", engine.get("workers", 1))
    if engine.get("name") == "vectorized":
        _auto_or_count("engine.max_cohort", engine.get("max_cohort", "auto"))
