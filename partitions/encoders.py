"""Encoders that turn a data set's samples into embedding vectors, with an on-disk cache.

An encoder spec is a string or a callable:
- `pca` (the offline default): the raw inputs, flattened (the partitioner's PCA step then reduces them);
- `torchvision:<model>` / `timm:<model>`: an ImageNet-pretrained image encoder, penultimate layer;
- `sentence-transformers:<model>`: a text encoder (the feature column holds strings);
- `model:<run folder>`: a trained fedsim model (its `model.pt` and `config.yaml`), penultimate layer, i.e. the
  task-specific embedding of Borazjani et al.;
- any callable mapping an N x ... float array (or list of strings) to an N x D array.
The pretrained encoders need their weights; without them they fail with one line saying so.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import numpy as np

EncoderSpec = str | Callable[[Any], np.ndarray]
FEATURE_COLUMNS = ("x", "image", "img", "text", "sentence")
ENCODER_KINDS = "pca, torchvision:<model>, timm:<model>, sentence-transformers:<model> or model:<run folder>"


def default_cache_dir() -> Path:
    return Path(os.environ.get("FEDSIM_CACHE", Path.home() / ".cache" / "fedsim")) / "embeddings"


def feature_column_of(dataset: datasets.Dataset, requested: str | None = None) -> str:
    if requested:
        if requested not in dataset.column_names:
            raise ValueError(f"feature column {requested!r} is not in the data set's columns {dataset.column_names}")
        return requested
    for name in FEATURE_COLUMNS:
        if name in dataset.column_names:
            return name
    raise ValueError(f"no feature column among {dataset.column_names}; name it with feature_column=")


def raw_features(dataset: datasets.Dataset, column: str) -> np.ndarray:
    """The column as a float array, N x ... (images as N x C x H x W in [0, 1])."""
    if isinstance(dataset.features[column], datasets.Image):
        return _image_batch(dataset[column])
    return np.asarray(dataset.with_format("numpy")[column], dtype=np.float32)


def _image_batch(images: list) -> np.ndarray:
    """Images (PIL or arrays, HxW or HxWxC) as one N x C x H x W float array; 8-bit pixels scaled to [0, 1]."""
    batch = np.stack([np.asarray(image) for image in images])
    if batch.ndim not in (3, 4):
        raise ValueError(f"cannot read images of shape {batch.shape[1:]}")
    scale = 255.0 if batch.dtype == np.uint8 else 1.0
    batch = batch[:, None] if batch.ndim == 3 else batch.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(batch, dtype=np.float32) / scale


def _torch_penultimate(model: Any, inputs: np.ndarray, batch_size: int = 256) -> np.ndarray:
    import torch
    from rich.console import Console
    from rich.progress import track

    outputs = []
    model.eval()
    starts = range(0, len(inputs), batch_size)
    if len(starts) > 20:  # a progress bar (on stderr, gone when done) for encodings that take a while
        starts = track(starts, description="embedding", transient=True, console=Console(stderr=True))
    with torch.no_grad():
        for start in starts:
            outputs.append(model(torch.from_numpy(inputs[start : start + batch_size])).flatten(1).numpy())
    return np.concatenate(outputs)


def _imagenet_ready(images: np.ndarray) -> np.ndarray:
    """Grayscale broadcast to 3 channels, resized to 224, ImageNet-normalised (N x 3 x 224 x 224)."""
    import torch

    batch = torch.from_numpy(images)
    if batch.shape[1] == 1:
        batch = batch.expand(-1, 3, -1, -1)
    batch = torch.nn.functional.interpolate(batch, size=(224, 224), mode="bilinear", align_corners=False)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return ((batch - mean) / std).numpy()


def _pretrained(kind: str, name: str) -> Callable[[np.ndarray], np.ndarray]:
    def encode(images: np.ndarray) -> np.ndarray:
        try:
            if kind == "torchvision":
                import torch
                import torchvision

                model = torchvision.models.get_model(name, weights="DEFAULT")
                for head in ("fc", "classifier", "heads", "head"):
                    if hasattr(model, head):
                        setattr(model, head, torch.nn.Identity())
                        break
            else:
                import timm

                model = timm.create_model(name, pretrained=True, num_classes=0)
        except Exception as error:  # pylint: disable=broad-exception-caught
            raise RuntimeError(f"encoder {kind}:{name} could not be loaded "
                               f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
                               "install it and make its weights available, or use encoder=pca") from None
        return _torch_penultimate(model, _imagenet_ready(images), batch_size=64)

    return encode


def _sentence_transformer(name: str) -> Callable[[Any], np.ndarray]:
    def encode(texts: Any) -> np.ndarray:
        try:
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(name)
        except Exception as error:  # pylint: disable=broad-exception-caught
            raise RuntimeError(f"encoder sentence-transformers:{name} could not be loaded ({type(error).__name__}); "
                               "install sentence-transformers and make the model available") from None
        return np.asarray(model.encode(list(texts), batch_size=64, show_progress_bar=False))

    return encode


def _fedsim_model(run_dir: str) -> Callable[[np.ndarray], np.ndarray]:
    """The penultimate activations of a trained fedsim model (the input of its last Linear layer)."""

    def encode(inputs: np.ndarray) -> np.ndarray:
        import hydra.utils
        import torch
        import yaml

        folder = Path(run_dir)
        if not (folder / "model.pt").is_file():
            raise RuntimeError(f"encoder model:{run_dir} needs a fedsim run folder with model.pt and config.yaml")
        experiment = yaml.safe_load((folder / "config.yaml").read_text())
        state = torch.load(folder / "model.pt", map_location="cpu")
        meta = state.pop("__fedsim__")
        model = hydra.utils.instantiate(experiment["model"], input_shape=meta["input_shape"],
                                        num_classes=meta["num_classes"])
        model.load_state_dict(state)
        last_linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        captured: list[np.ndarray] = []
        hook = last_linear.register_forward_hook(
            lambda _m, args, _out: captured.append(args[0].detach().flatten(1).numpy()))
        try:
            _torch_penultimate(model, inputs)
        finally:
            hook.remove()
        return np.concatenate(captured)

    return encode


def resolve_encoder(spec: EncoderSpec) -> tuple[str, Callable[[Any], np.ndarray]]:
    """(cache name, function) of an encoder spec."""
    if callable(spec):
        return getattr(spec, "__qualname__", "callable"), spec
    kind, _, name = str(spec).partition(":")
    if kind == "pca" and not name:
        return "pca", lambda inputs: np.asarray(inputs, dtype=np.float32).reshape(len(inputs), -1)
    if kind in ("torchvision", "timm") and name:
        return spec, _pretrained(kind, name)
    if kind == "sentence-transformers" and name:
        return spec, _sentence_transformer(name)
    if kind == "model" and name:
        return spec, _fedsim_model(name)
    raise ValueError(f"encoder={spec!r}: {ENCODER_KINDS}, or a callable")


class EncoderSpecs:
    """A parameter constraint (`fedsim.protocol.constraints`): an encoder spec `resolve_encoder` accepts. Nothing is
    loaded to check it."""

    def allows(self, value: Any) -> bool:
        try:
            resolve_encoder(value)
        except ValueError:
            return False
        return True

    def __str__(self) -> str:
        return ENCODER_KINDS


def embed(dataset: datasets.Dataset, encoder: EncoderSpec = "pca", feature_column: str | None = None,
          cache_dir: Path | str | None = None) -> np.ndarray:
    """Embeddings of every row, cached on disk keyed by the data's content, the column and the encoder."""
    column = feature_column_of(dataset, feature_column)
    name, function = resolve_encoder(encoder)
    is_text = isinstance(dataset.features[column], datasets.Value) and dataset.features[column].dtype == "string"
    inputs = list(dataset[column]) if is_text else raw_features(dataset, column)
    digest = hashlib.sha1()
    digest.update(f"{name}|{column}|{len(dataset)}".encode())
    digest.update("\x00".join(inputs).encode() if is_text else np.ascontiguousarray(inputs).tobytes())
    cache = (Path(cache_dir) if cache_dir else default_cache_dir()) / f"{digest.hexdigest()}.npy"
    if cache.is_file() and not callable(encoder):
        return np.load(cache)
    embeddings = np.asarray(function(inputs), dtype=np.float32)
    if embeddings.shape[0] != len(dataset):
        raise ValueError(f"encoder {name} returned {embeddings.shape[0]} rows for {len(dataset)} samples")
    if not callable(encoder):
        cache.parent.mkdir(parents=True, exist_ok=True)
        temporary = cache.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(temporary, embeddings)
        os.replace(temporary, cache)
    return embeddings
