"""Local files: parquet, csv or an image folder, read with Hugging Face `datasets`."""

from __future__ import annotations

from pathlib import Path

import datasets

from ..errors import DataError
from .base import LABEL, LoadedData
from .hub import normalise_columns, num_classes_of
from .tensors import hf_to_arrays

FORMATS = ("parquet", "csv", "imagefolder")


def _read(path: str, file_format: str) -> datasets.Dataset:
    if not Path(path).exists():
        raise DataError(f"dataset.path={path!r} does not exist")
    if file_format == "imagefolder":
        return datasets.load_dataset("imagefolder", data_dir=path, split="train")
    return datasets.load_dataset(file_format, data_files=str(path), split="train")


def _with_feature_column(split: datasets.Dataset, image_column: str) -> tuple[datasets.Dataset, str]:
    """Tabular files keep features in many columns: gather every non-label column into one `x` column."""
    if image_column in split.column_names:
        return split, image_column
    columns = [c for c in split.column_names if c != LABEL]

    def gather(batch: dict) -> dict:
        return {"x": [list(row) for row in zip(*(batch[c] for c in columns), strict=True)]}

    return split.map(gather, batched=True, remove_columns=columns), "x"


def load_local_data(
    file_format: str, path: str, test_path: str | None, test_fraction: float, image_column: str, label_column: str, seed: int
) -> LoadedData:
    if file_format not in FORMATS:
        raise DataError(f"dataset.format={file_format!r} is not allowed: one of {', '.join(FORMATS)}")
    table = _read(path, file_format)
    if label_column not in table.column_names:
        raise DataError(f"dataset.label_column={label_column!r} is not a column of {path}; its columns are {table.column_names}")
    if label_column != LABEL:
        table = table.rename_column(label_column, LABEL)
    if test_path:
        train, test = table, _read(test_path, file_format)
        if label_column != LABEL and label_column in test.column_names:
            test = test.rename_column(label_column, LABEL)
    else:
        parts = table.train_test_split(test_size=test_fraction, seed=seed)
        train, test = parts["train"], parts["test"]
    train, feature_column = _with_feature_column(train, image_column)
    test, _ = _with_feature_column(test, image_column)
    if feature_column == image_column:
        train = normalise_columns(train, image_column, LABEL, "dataset")
    return LoadedData(
        name=Path(path).stem,
        train=train,
        feature_column=feature_column,
        train_arrays=hf_to_arrays(train, feature_column),
        test_arrays=hf_to_arrays(test, feature_column),
        num_classes=max(num_classes_of(train), num_classes_of(test)),
    )
