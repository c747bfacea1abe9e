"""What a compressor is: an encoder of a client's update into bytes and the decoder of those bytes on the server.

An update is the named float32 arrays Δ = w_local − w_global, in the order the server sent the model. A compressor
sees nothing else: which arrays are updates, the message framing (a magic, a checksum, the codec's name), error
feedback and the names travel in `fedsim.compression.message`, so a codec is only its arithmetic and its bytes.

A decoder reads bytes from a machine that is not trusted: it checks every length, count and index it reads
against `like` (the shapes the server expects) before it allocates or indexes, and raises `CorruptPayload` (one
line: what is wrong) for anything else. It never allocates more than the expected arrays need.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np


class CorruptPayload(ValueError):
    """A compressed update that does not decode to the arrays the server expects."""


Shapes = Mapping[str, tuple[int, ...]]  # name -> shape, in the order the arrays were sent


class Compressor:
    """Base class of `compression._target_`: encodes an update into bytes, decodes bytes back into an update.

    `lossless` says whether `decode(encode(u)) == u` bit for bit. A lossy codec's round trip is what
    `reconstruct` gives on the client, which error feedback subtracts (`fedsim.compression.message`).
    """

    name: ClassVar[str] = "?"
    lossless: ClassVar[bool] = False
    active: ClassVar[bool] = True  # False: updates travel as they are (`NoCompression`)
    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {}

    def encode(self, update: Mapping[str, np.ndarray], rng: np.random.Generator) -> bytes:
        """The bytes of `update` (float32 arrays); `rng` is the only randomness a stochastic codec may use."""
        raise NotImplementedError

    def decode(self, payload: bytes, like: Shapes) -> dict[str, np.ndarray]:
        """The float32 arrays `payload` encodes, one per name in `like` with its shape; `CorruptPayload` else."""
        raise NotImplementedError

    def reconstruct(self, update: Mapping[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        """What the server will decode from this update (the encoder's output decoded): error feedback's estimate."""
        shapes = {name: tuple(array.shape) for name, array in update.items()}
        return self.decode(self.encode(update, rng), shapes)


class NoCompression(Compressor):
    """`compression=none`: replies carry the trained arrays themselves, as without the layer."""

    name = "none"
    lossless = True
    active = False

    def encode(self, update: Mapping[str, np.ndarray], rng: np.random.Generator) -> bytes:
        raise TypeError("compression=none encodes nothing: replies carry their arrays")

    def decode(self, payload: bytes, like: Shapes) -> dict[str, np.ndarray]:
        raise CorruptPayload("the experiment compresses no update (compression=none)")
