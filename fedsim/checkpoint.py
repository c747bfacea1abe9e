"""Checkpoints of a run, so that a killed run continues where it stopped with the same result.

After every `server.checkpoint_every` rounds the run folder gets `checkpoint.pt`, written atomically: the global
model, the strategy object itself (its state: FedDisco's histograms, FedLAW's γ/λ, FedCE's running means and
weights, FairFed's ω̄, ...), the random states the server draws from (client sampling uses `random`), the rows
recorded so far, and the in-process engine's node states (FedCE's clients keep their last local model there).
Clients seed their own data order from (seed, round, partition), so nothing else is needed for the same result.
"""

from __future__ import annotations

import io
import pickle
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord

from .results import write_atomic

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT = 1


@dataclass
class Checkpoint:
    server_round: int
    arrays: ArrayRecord
    strategy: Any
    recorder_state: dict[str, Any]
    node_states: dict[int, Any] | None
    python_random: Any
    torch_random: torch.Tensor
    numpy_random: Any


def save_checkpoint(run_dir: Path, checkpoint: Checkpoint) -> None:
    buffer = io.BytesIO()
    pickle.dump({"format": FORMAT, **checkpoint.__dict__}, buffer, protocol=pickle.HIGHEST_PROTOCOL)
    write_atomic(Path(run_dir) / CHECKPOINT_FILE, buffer.getvalue())


def capture(server_round: int, arrays: ArrayRecord, strategy: Any, recorder_state: dict[str, Any],
            node_states: dict[int, Any] | None) -> Checkpoint:
    """A checkpoint of the run as it is now, at the end of `server_round`."""
    # Under Flower's Deployment Runtime an aggregated ArrayRecord may hold memoryviews of received bytes, which
    # pickle refuses: keep a copy that owns its data.
    arrays = ArrayRecord(arrays.to_torch_state_dict())
    return Checkpoint(server_round, arrays, strategy, recorder_state, node_states,
                      random.getstate(), torch.get_rng_state(), np.random.get_state())


def load_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The run folder's checkpoint, or None if it has none."""
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.exists():
        return None
    with open(path, "rb") as stream:
        state = pickle.load(stream)  # noqa: S301 - a file this run wrote itself
    if state.pop("format", None) != FORMAT:
        raise ValueError(f"{path} was written by another fedsim version; start the run again")
    return Checkpoint(**state)


def restore_random_states(checkpoint: Checkpoint) -> None:
    random.setstate(checkpoint.python_random)
    torch.set_rng_state(checkpoint.torch_random)
    np.random.set_state(checkpoint.numpy_random)
