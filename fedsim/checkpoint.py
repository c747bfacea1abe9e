"""Checkpoints of a run, so that a killed run continues where it stopped with the same result, stored in a form
that loading cannot turn into running code.

After every `server.checkpoint_every` rounds the run folder gets `checkpoint.pt`, written atomically: a `torch.save`
file that holds nothing but a JSON text and a flat dict of tensors, read back with `torch.load(weights_only=True)`
(PyTorch's restricted unpickler, which builds tensors, strings, numbers and dicts and imports nothing). A file that
is not a torch zip file, such as the raw pickle older fedsim versions wrote, is refused before anything parses it.

It holds:
- the global model;
- the strategy's state: its instance attributes (FedDisco's histograms, FedCE's running means and weights, FairFed's
  ω̄, ...), except functions and the attributes its class names in `rebuilt_from_config` (FedLAW's architecture and
  proxy set), which the run's config builds again. They must be plain data (numbers, strings, None, lists, tuples,
  sets and dicts of them, numpy arrays and scalars, tensors, Flower records): anything else fails the save with a
  TypeError naming the attribute, and fedsim then runs on without checkpoints and says so once (`Checkpointer`);
- the random states the server draws from (`random`, torch, numpy: client sampling uses `random`);
- the rows recorded so far;
- the in-process engine's node states (FedCE's clients keep their last local model there);
- an asynchronous run's loop: the clients in flight, the models they started from, the clock and the counts.
Clients seed their own data order from (seed, round, partition), so nothing else is needed for the same result.

A checkpoint that is truncated, damaged, not a checkpoint, or from another fedsim version raises `CheckpointError`:
one line that says what is wrong and how to start over.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import logging
import random
import types
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from .errors import FedsimError
from .protocol.capabilities import KeepsNodeState, strategy_traits
from .recorder import Recorder, write_atomic

logger = logging.getLogger("fedsim")

CHECKPOINT_FILE = "checkpoint.pt"
# 2: torch.save of {FORMAT_KEY: 2, "state": JSON text, "tensors": {name: tensor}}. 1 (fedsim before it) was a raw
# pickle of the strategy object, which is never loaded: a pickle runs whatever code it names.
FORMAT = 2
FORMAT_KEY = "fedsim_checkpoint"
ZIP_MAGIC = b"PK\x03\x04"  # torch.save files are zip archives
PICKLE_PROTOCOL_OPCODE = b"\x80"
TAG = "$"  # a JSON object with this key is an encoded value (a tuple, an array, a record, ...), not a plain dict


class CheckpointError(FedsimError):
    """A run folder's checkpoint that cannot be loaded; the one-line message says what is wrong and how to start
    over (the sweep re-runs such a point, `fedsim resume` exits 2 with it)."""


@dataclass
class Checkpoint:
    server_round: int
    arrays: ArrayRecord
    strategy_state: dict[str, Any]  # {"class": "module.Name", "attributes": {name: value}}
    recorder_state: dict[str, Any]
    node_states: dict[int, Any] | None
    python_random: Any
    torch_random: torch.Tensor
    numpy_random: Any
    path: Path | None = None  # where it was loaded from (not saved)
    loop: dict[str, Any] | None = None  # an asynchronous run's loop (`fedsim.async_rounds.AsyncLoop.state`)


# --- the strategy's state ------------------------------------------------------------------------------------


def _class_name(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _is_code(value: Any) -> bool:
    """Functions, methods and classes: behaviour the strategy's constructor sets up from the config, not state."""
    return isinstance(value, (types.FunctionType, types.BuiltinFunctionType, types.MethodType, functools.partial, type))


def strategy_state(strategy: Any) -> dict[str, Any]:
    """The strategy's instance attributes but code and `rebuilt_from_config` (values by reference: encode now)."""
    rebuilt = set(strategy_traits(type(strategy)).rebuilt_from_config)
    attributes = {name: value for name, value in vars(strategy).items() if name not in rebuilt and not _is_code(value)}
    return {"class": _class_name(strategy), "attributes": attributes}


def restore_strategy(strategy: Any, checkpoint: Checkpoint) -> None:
    """Put the checkpoint's state into `strategy`, built afresh from the run's config."""
    saved = checkpoint.strategy_state["class"]
    if saved != _class_name(strategy):
        raise _error(checkpoint.path, f"holds the state of a {saved} strategy, but the run's config builds a "
                                      f"{_class_name(strategy)}")
    for name, value in checkpoint.strategy_state["attributes"].items():
        setattr(strategy, name, value)


# --- encoding: JSON for the structure, tensors beside it -----------------------------------------------------


class _Encoder:
    """Turns plain data into JSON-ready values, moving arrays and tensors into `tensors` (referred to by name)."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    def _tensor(self, tensor: torch.Tensor) -> str:
        name = str(len(self.tensors))
        self.tensors[name] = tensor.detach().cpu().contiguous()
        return name

    def _ndarray(self, array: np.ndarray, where: str) -> str:
        if array.dtype.hasobject or array.dtype.kind not in "biufc":
            raise TypeError(f"{where}: a numpy array of dtype {array.dtype} cannot be saved in a checkpoint")
        if not (array.flags.c_contiguous and array.flags.writeable and array.dtype.isnative):
            array = np.array(array, dtype=array.dtype.newbyteorder("="), order="C", copy=True)
        return self._tensor(torch.from_numpy(array))

    def encode(self, value: Any, where: str) -> Any:  # pylint: disable=too-many-return-statements
        if isinstance(value, np.generic):  # before float: np.float64 is a float, and must come back as itself
            if value.dtype.kind not in "biufc":
                raise TypeError(f"{where}: a numpy {value.dtype} cannot be saved in a checkpoint")
            return {TAG: "numpy", "dtype": value.dtype.str, "value": value.item()}
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        kind = type(value)
        if kind is list:
            return [self.encode(item, f"{where}[{i}]") for i, item in enumerate(value)]
        if kind is tuple:
            return {TAG: "tuple", "items": [self.encode(item, f"{where}[{i}]") for i, item in enumerate(value)]}
        if kind in (set, frozenset):
            return {TAG: kind.__name__, "items": [self.encode(item, f"{where} item") for item in value]}
        if kind is dict:
            if all(isinstance(key, str) for key in value) and TAG not in value:
                return {key: self.encode(item, f"{where}[{key!r}]") for key, item in value.items()}
            return {TAG: "dict", "items": [[self.encode(key, f"{where} key"), self.encode(item, f"{where}[{key!r}]")]
                                          for key, item in value.items()]}
        if kind is bytes:
            return {TAG: "bytes", "base64": base64.b64encode(value).decode("ascii")}
        if kind is np.ndarray:
            return {TAG: "ndarray", "tensor": self._ndarray(value, where)}
        if kind is torch.Tensor:
            return {TAG: "tensor", "tensor": self._tensor(value)}
        if kind is torch.device:
            return {TAG: "device", "value": str(value)}
        if kind is ArrayRecord:
            return {TAG: "ArrayRecord", "items": [[key, self._ndarray(array.numpy(), f"{where}[{key!r}]")]
                                                  for key, array in value.items()]}
        if kind in (MetricRecord, ConfigRecord):
            return {TAG: kind.__name__, "items": self.encode(dict(value), where)}
        if kind is RecordDict:
            return {TAG: "RecordDict",
                    "items": [[key, self.encode(record, f"{where}[{key!r}]")] for key, record in value.items()]}
        raise TypeError(f"{where} is a {kind.__module__}.{kind.__qualname__}, which cannot be saved in a checkpoint "
                        "(plain data, numpy arrays, tensors and Flower records can; a strategy lists attributes its "
                        "config rebuilds in `rebuilt_from_config`)")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:  # pylint: disable=too-many-return-statements
    if isinstance(value, list):
        return [_decode(item, tensors) for item in value]
    if not isinstance(value, dict):
        return value
    if TAG not in value:
        return {key: _decode(item, tensors) for key, item in value.items()}
    kind = value[TAG]
    if kind == "numpy":
        return np.dtype(value["dtype"]).type(value["value"])
    if kind == "tuple":
        return tuple(_decode(item, tensors) for item in value["items"])
    if kind in ("set", "frozenset"):
        return {"set": set, "frozenset": frozenset}[kind](_decode(item, tensors) for item in value["items"])
    if kind == "dict":
        return {_decode(key, tensors): _decode(item, tensors) for key, item in value["items"]}
    if kind == "bytes":
        return base64.b64decode(value["base64"])
    if kind == "ndarray":
        return tensors[value["tensor"]].numpy()
    if kind == "tensor":
        return tensors[value["tensor"]]
    if kind == "device":
        return torch.device(value["value"])
    if kind == "ArrayRecord":
        return ArrayRecord({key: Array(tensors[name].numpy()) for key, name in value["items"]})
    if kind == "MetricRecord":
        return MetricRecord(_decode(value["items"], tensors))
    if kind == "ConfigRecord":
        return ConfigRecord(_decode(value["items"], tensors))
    if kind == "RecordDict":
        return RecordDict({key: _decode(record, tensors) for key, record in value["items"]})
    raise ValueError(f"unknown entry {kind!r}")


# --- saving and loading --------------------------------------------------------------------------------------


def capture(server_round: int, arrays: ArrayRecord, strategy: Any, recorder_state: dict[str, Any],
            node_states: dict[int, Any] | None, loop: dict[str, Any] | None = None) -> Checkpoint:
    """A checkpoint of the run as it is now, at the end of `server_round` (encode it with `save_checkpoint` before
    the run goes on: the strategy's attributes are held by reference)."""
    return Checkpoint(server_round, arrays, strategy_state(strategy), recorder_state, node_states,
                      random.getstate(), torch.get_rng_state(), np.random.get_state(), loop=loop)


def save_checkpoint(run_dir: Path, checkpoint: Checkpoint) -> None:
    """Write `checkpoint.pt` atomically; a TypeError naming the value if some state is not plain data."""
    encoder = _Encoder()
    state = {
        "server_round": int(checkpoint.server_round),
        "arrays": encoder.encode(checkpoint.arrays, "the global model"),
        "strategy": {"class": checkpoint.strategy_state["class"],
                     "attributes": encoder.encode(checkpoint.strategy_state["attributes"], "strategy")},
        "recorder": encoder.encode(checkpoint.recorder_state, "recorder"),
        "nodes": encoder.encode(checkpoint.node_states, "node state"),
        "loop": encoder.encode(checkpoint.loop, "asynchronous loop"),
        "random": {"python": encoder.encode(checkpoint.python_random, "random"),
                   "torch": encoder.encode(checkpoint.torch_random, "torch random"),
                   "numpy": encoder.encode(checkpoint.numpy_random, "numpy random")},
    }
    buffer = io.BytesIO()
    torch.save({FORMAT_KEY: FORMAT, "state": json.dumps(state), "tensors": encoder.tensors}, buffer)
    write_atomic(Path(run_dir) / CHECKPOINT_FILE, buffer.getvalue())


def _error(path: Path | None, problem: str) -> CheckpointError:
    """'PATH PROBLEM: how to start over', one line. A deployed run refuses to restart over finished rounds without
    a checkpoint (`fedsim.deploy.server_app.existing_run`), so there its metrics.csv goes too."""
    from .deploy.server_app import DEPLOYMENT_FILE
    from .recorder import METRICS_FILE

    where = Path(path) if path is not None else Path(CHECKPOINT_FILE)
    folder = where.parent
    if (folder / DEPLOYMENT_FILE).exists():
        return CheckpointError(f"{where} {problem}: delete it and {folder / METRICS_FILE} to restart the run from "
                               f"round 1 (fedsim resume {folder} then starts over)")
    return CheckpointError(f"{where} {problem}: delete it to restart the run from round 1 "
                           f"(fedsim resume {folder} then starts over)")


def load_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The run folder's checkpoint, or None if it has none; `CheckpointError` if it cannot be used."""
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.exists():
        return None
    content = path.read_bytes()
    if not content:
        raise _error(path, "is empty")
    if not content.startswith(ZIP_MAGIC):
        if content.startswith(PICKLE_PROTOCOL_OPCODE):
            raise _error(path, "is a raw pickle, the format of older fedsim versions, which fedsim no longer loads "
                               "because loading a pickle runs any code it names")
        raise _error(path, "is not a fedsim checkpoint (not a torch.save file)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            saved = torch.load(io.BytesIO(content), map_location="cpu", weights_only=True)
    except Exception as error:  # pylint: disable=broad-exception-caught  # whatever the reader says, the file is unusable
        lines = str(error).strip().splitlines()
        first = lines[0].split(". ")[0] if lines else type(error).__name__  # torch adds sentences of advice
        refused = "Weights only load failed" in str(error)
        detail = "holds objects other than tensors and plain data, refused unread" if refused else \
            f"is truncated or damaged ({first})"
        raise _error(path, detail) from None
    if not isinstance(saved, dict) or FORMAT_KEY not in saved:
        raise _error(path, "is not a fedsim checkpoint")
    if saved[FORMAT_KEY] != FORMAT:
        raise _error(path, f"was written by another fedsim version (checkpoint format {saved[FORMAT_KEY]!r}; this one "
                           f"reads {FORMAT})")
    try:
        return _checkpoint_from(saved, path)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
        raise _error(path, f"is damaged ({type(error).__name__}: {error})") from None


def _checkpoint_from(saved: dict[str, Any], path: Path) -> Checkpoint:
    tensors = saved["tensors"]
    if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise TypeError("its tensors are not a dict of tensors")
    state = json.loads(saved["state"])
    strategy = state["strategy"]
    nodes = _decode(state["nodes"], tensors)
    checkpoint = Checkpoint(
        server_round=int(state["server_round"]),
        arrays=_decode(state["arrays"], tensors),
        strategy_state={"class": str(strategy["class"]), "attributes": _decode(strategy["attributes"], tensors)},
        recorder_state=_decode(state["recorder"], tensors),
        node_states=nodes,
        python_random=_decode(state["random"]["python"], tensors),
        torch_random=_decode(state["random"]["torch"], tensors),
        numpy_random=_decode(state["random"]["numpy"], tensors),
        path=path,
        loop=_decode(state.get("loop"), tensors),
    )
    if not isinstance(checkpoint.arrays, ArrayRecord) or not isinstance(checkpoint.strategy_state["attributes"], dict):
        raise TypeError("the global model or the strategy state is missing")
    return checkpoint


def restore_random_states(checkpoint: Checkpoint) -> None:
    random.setstate(checkpoint.python_random)
    torch.set_rng_state(checkpoint.torch_random)
    np.random.set_state(checkpoint.numpy_random)


# --- during a run --------------------------------------------------------------------------------------------


class Checkpointer:
    """A run's checkpoints: it saves the strategy, the recorder's rows, the engine's node states and the random
    states after every `every` rounds (0: never) and after the last round, and puts them back on resume. When the
    strategy's state cannot be saved it says so once and turns itself off: the run matters more than its
    checkpoints."""

    def __init__(self, recorder: Recorder, strategy: Any, engine_grid: object, every: int, num_rounds: int) -> None:
        self._recorder, self._strategy, self._engine_grid = recorder, strategy, engine_grid
        self._every, self._last_round = every, num_rounds
        self.enabled = every > 0

    def after_round(self, server_round: int, arrays: ArrayRecord, loop: dict[str, Any] | None = None) -> None:
        """Save the run as it is at the end of `server_round` when that round is due (`loop`: an asynchronous
        run's loop state)."""
        if not self.enabled or (server_round % self._every and server_round != self._last_round):
            return
        states = self._engine_grid.node_states() if isinstance(self._engine_grid, KeepsNodeState) else None
        try:
            save_checkpoint(self._recorder.run_dir,
                            capture(server_round, arrays, self._strategy, self._recorder.state(), states, loop))
        except TypeError as error:  # a strategy holding state that is not plain data
            self.enabled = False
            logger.warning("checkpoints turned off: the strategy's state cannot be saved (%s)", error)

    def resume(self) -> Checkpoint | None:
        """The run folder's checkpoint, with its state put back into the strategy (built afresh from the run's
        config), the recorder, the engine's nodes and the random generators; None when there is none."""
        checkpoint = load_checkpoint(self._recorder.run_dir)
        if checkpoint is None:
            return None
        restore_strategy(self._strategy, checkpoint)
        self._recorder.restore(checkpoint.recorder_state)
        if checkpoint.node_states is not None and isinstance(self._engine_grid, KeepsNodeState):
            self._engine_grid.restore_node_states(checkpoint.node_states)
        restore_random_states(checkpoint)
        return checkpoint
