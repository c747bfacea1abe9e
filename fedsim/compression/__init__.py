"""Compressors of client updates, a layer every strategy and engine shares (`compression=<name>`).

`base.Compressor` is what a codec is; `message` frames a codec's bytes into a train reply and back. The codecs:
FedZip (`fedzip`: Malekijoo et al.'s top-z sparsification, 3-cluster k-means and real entropy coding), top-k and
random-k sparsification (`sparsify`), QSGD's stochastic quantisation (`quantize`), and half-precision casts
(`floats`). A config names one by `compression._target_`; `compression=none` sends updates as they are.
"""

from __future__ import annotations

import importlib
from typing import Any

from .base import Compressor, CorruptPayload, NoCompression

_CODECS = {
    "FedZip": "fedzip",
    "TopK": "sparsify",
    "RandomK": "sparsify",
    "QSGD": "quantize",
    "Float16": "floats",
    "BFloat16": "floats",
    "Identity": "floats",
}

__all__ = ["Compressor", "CorruptPayload", "NoCompression", *_CODECS]


def __getattr__(name: str) -> Any:
    """A codec class, imported on first use (a run without compression loads none of them)."""
    if name in _CODECS:
        return getattr(importlib.import_module(f".{_CODECS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
