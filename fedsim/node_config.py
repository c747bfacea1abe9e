"""What a SuperNode learns from its own `--node-config`, and the one-line errors it reports about it.

Keys (all read on the node, never sent by the server):
- `partition-id` (required): the node's index in the federation; the server orders nodes by it and names metric
  columns after it (`acc_client_<id>`);
- `num-partitions` (optional): the federation size, as in Flower's examples; checked against `num_clients`;
- `data-path` (optional): the node's own data (a parquet/csv file or an image folder), instead of partition
  `partition-id` of the configured data set: the cross-silo case, where no machine sees another's rows;
- `device` (optional): `auto` (default: the experiment's `device`), `cpu`, `cuda` or `cuda:1`; resolved here, so
  each node uses its own GPU or runs on CPU when it has none;
- `misbehave` (optional, experiments only): an attack of `fedsim.attacks` (`random`, `reverse`, `alie`, `foe`,
  `scale`, `sign-flip`, `nan`, `label-flip`, `noisy-data`), so that a deployment can run Byzantine nodes among
  honest ones; the same kinds as the experiment's `attack.kind`;
- `misbehave-scale`, `misbehave-z`, `misbehave-epsilon`, `misbehave-estimates`, `misbehave-noise-std` (optional):
  that attack's settings, as `attack.scale` etc. (`auto` values take this node alone: ALIE's z_max for 2 clients,
  2 estimates).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from functools import lru_cache, wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from flwr.app import Context, Error, Message
from flwr.common.constant import ErrorCode

from .errors import DataError, FedsimError
from .protocol.keys import NUM_PARTITIONS, PARTITION_ID

if TYPE_CHECKING:
    from .attacks import Attack
    from .data.federation import Federation

DATA_PATH = "data-path"
DEVICE = "device"
MISBEHAVE = "misbehave"
SUFFIX_FORMATS = {".parquet": "parquet", ".csv": "csv"}


class NodeConfigError(FedsimError):
    """A SuperNode's `--node-config` lacks a key or holds a bad value."""


def partition_id(context: Context) -> int:
    if PARTITION_ID not in context.node_config:
        raise NodeConfigError(
            f"this node has no '{PARTITION_ID}' in its node config; start it with --node-config '{PARTITION_ID}=N'"
        )
    value = context.node_config[PARTITION_ID]
    try:
        return int(value)
    except (TypeError, ValueError):
        raise NodeConfigError(f"--node-config {PARTITION_ID}={value!r} is not a whole number") from None


def node_device(context: Context, experiment: Mapping[str, Any]) -> torch.device:
    """The node's own `device`, else the experiment's; `auto` picks this machine's GPU when it has one."""
    name = str(context.node_config.get(DEVICE, experiment["device"]))
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise NodeConfigError(f"device={name} but this node sees no CUDA device; "
                              "use device=auto or --node-config 'device=\"cpu\"'")
    return torch.device(name)


def misbehavior(context: Context) -> Attack | None:
    """The attack the node's own `misbehave` instruction names (`fedsim.attacks`), or None for an honest node."""
    from .attacks import SETTINGS, parse_attack
    from .protocol.constraints import InvalidParameter

    kind = context.node_config.get(MISBEHAVE)
    if kind is None:
        return None
    keys = {name: f"{MISBEHAVE}-{name.replace('_', '-')}" for name in SETTINGS}  # misbehave-noise-std: noise_std
    settings = {name: context.node_config[key] for name, key in keys.items() if key in context.node_config}
    try:
        return parse_attack(kind, settings)
    except InvalidParameter as error:
        key = keys.get(error.name, MISBEHAVE)
        raise NodeConfigError(f"--node-config {key}={error.value!r}: {error.allowed}") from None


def node_federation(experiment: Mapping[str, Any], context: Context) -> Federation:
    """The federation as this node sees it: the configured one, or, with `data-path`, its own rows alone."""
    from .data.federation import federation_for  # imported here: it pulls in datasets and scikit-learn

    pid = partition_id(context)
    num_clients = int(experiment["num_clients"])
    if not 0 <= pid < num_clients:
        raise NodeConfigError(f"--node-config {PARTITION_ID}={pid} is outside this run's 0..{num_clients - 1} "
                              f"(num_clients={num_clients})")
    declared = context.node_config.get(NUM_PARTITIONS)
    if declared is not None and int(declared) != num_clients:
        raise NodeConfigError(f"--node-config {NUM_PARTITIONS}={declared} but the run has num_clients={num_clients}")
    path = context.node_config.get(DATA_PATH)
    if path is None:
        return federation_for(experiment)
    from .build import locate
    from .data.local import LocalFiles

    dataset = experiment["dataset"]
    local = dataset if issubclass(locate(str(dataset["_target_"])), LocalFiles) else {}
    return _local_federation(str(path), str(local.get("format") or _format_of(str(path))),
                             str(local.get("image_column", "image")), str(local.get("label_column", "label")), pid,
                             float(experiment["client"]["val_fraction"]), int(experiment["seed"]))


def _format_of(path: str) -> str:
    if Path(path).is_dir():
        return "imagefolder"
    file_format = SUFFIX_FORMATS.get(Path(path).suffix.lower())
    if file_format is None:
        raise NodeConfigError(f"--node-config {DATA_PATH}={path!r}: a .parquet or .csv file or an image folder")
    return file_format


@lru_cache(maxsize=2)
def _local_federation(path: str, file_format: str, image_column: str, label_column: str, pid: int,  # pylint: disable=too-many-arguments
                      val_fraction: float, seed: int) -> Federation:
    """A federation in which this node's partition is every row of its own file (the other partitions are empty)."""
    from .data.federation import Federation
    from .data.local import load_local_data

    if not Path(path).exists():
        raise NodeConfigError(f"--node-config {DATA_PATH}={path!r} does not exist on this node")
    data = load_local_data(file_format, path, path, 0.2, image_column, label_column, seed)  # test split unused here
    empty = np.zeros(0, dtype=np.int64)
    indices = tuple(empty for _ in range(pid)) + (np.arange(len(data.train_arrays), dtype=np.int64),)
    return Federation(data, indices, val_fraction, seed)


def load_global_model(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], federation: Federation) -> None:
    """Load the server's weights; a node whose data gives another model shape says so in one line."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        first = next((line.strip() for line in str(error).splitlines()
                      if "size mismatch" in line or "Missing" in line), str(error).splitlines()[0])
        raise DataError(
            f"this node's data ({federation.data.name}: input shape {list(federation.data.input_shape)}, "
            f"{federation.data.num_classes} classes) does not fit the server's model: {first}"
        ) from None


def one_line_errors(handler: Callable[[Message, Context], Message]) -> Callable[[Message, Context], Message]:
    """A ClientApp handler whose fedsim errors become one line on the node's stderr and an error reply to the server
    (instead of a traceback in the SuperNode's log and an opaque failure on the server)."""

    @wraps(handler)
    def wrapped(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except FedsimError as error:
            line = f"fedsim node {context.node_id}: error: {error}"
            print(line, file=sys.stderr, flush=True)
            return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, line), reply_to=msg)

    return wrapped
