"""Local files: a table (CSV, parquet, JSON / JSON Lines) or images (an image folder, or parquet with an image column).

`dataset.format=auto` (the default) reads the format off the path: a folder is an image folder, a file its suffix
(`.csv`, `.parquet`/`.pq`, `.json`, `.jsonl`, also compressed: `.csv.gz`, ...). Tables are read with pandas, and
every column but the label is a feature, encoded as `dataset=adult`'s are (`fedsim.data.tabular`): numbers
standardised with the training split's mean and std, text one-hot. Labels may be integers 0..K-1 (kept as they
are) or any other values (text, negative integers), which become classes 0..K-1 in sorted order.

A file that cannot give a training set is refused in one `DataError` line that names the file and the problem,
before any training: empty, only a header, no label column, no feature column, a label with fewer than two classes
or with missing values, a label with non-integer numbers (a regression target), a number column with missing or
infinite values, a column of numbers holding some text, a text column with about as many distinct values as rows
(an id or free text, which one-hot would blow up), a test file whose columns differ from the training file's. A
text feature's missing value is a category of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pandas as pd

from ..errors import DataError, first_line
from ..protocol.constraints import Options
from .base import LABEL, SPLIT_FRACTION, DatasetLoader, LoadedData
from .hub import normalise_columns, num_classes_of
from .tabular import encode_features, split_columns
from .tensors import ArrayDataset, hf_to_arrays

FORMATS = ("auto", "csv", "parquet", "json", "imagefolder")
SUFFIX_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".json": "json", ".jsonl": "json"}
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst", ".zip")
# A text column with more distinct values than this share of the rows (and more than MIN_CATEGORIES_REFUSED) is
# an id or free text, not a category.
MAX_CATEGORY_SHARE = 0.5
MIN_CATEGORIES_REFUSED = 20


def resolve_format(file_format: str, path: str) -> str:
    """The configured format, or with `auto` the one the path says (a folder: imagefolder; a file: its suffix)."""
    if file_format not in FORMATS:
        raise DataError(f"dataset.format={file_format!r} is not allowed: one of {', '.join(FORMATS)}")
    if file_format != "auto":
        return file_format
    if Path(path).is_dir():
        return "imagefolder"
    suffixes = [suffix.lower() for suffix in Path(path).suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes = suffixes[:-1]
    found = SUFFIX_FORMATS.get(suffixes[-1] if suffixes else "")
    if found is None:
        raise DataError(f"dataset.path={path}: cannot tell its format from its name; name it .csv, .parquet, .json or "
                        f".jsonl, or set dataset.format to one of {', '.join(FORMATS[1:])}")
    return found


def _has_image_column(path: str, image_column: str) -> bool:
    import pyarrow.parquet as pq

    if Path(path).stat().st_size == 0:
        raise DataError(f"dataset.path={path}: the file is empty")
    try:
        return image_column in pq.read_schema(path).names
    except Exception as error:  # pylint: disable=broad-exception-caught  # any failure: the file is not parquet
        raise DataError(f"dataset.path={path}: cannot be read as parquet ({first_line(error)})") from None


def _read_table(where: str, path: str, file_format: str) -> pd.DataFrame:
    """The file as a data frame; a file pandas cannot read is one DataError line."""
    if Path(path).stat().st_size == 0:
        raise DataError(f"{where}: the file is empty")
    try:
        if file_format == "csv":
            return pd.read_csv(path, low_memory=False)  # whole-column types, no DtypeWarning
        if file_format == "parquet":
            return pd.read_parquet(path)
        return _read_json(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"{where}: the file is empty (no header, no rows)") from None
    except Exception as error:  # pylint: disable=broad-exception-caught  # any reader failure is the file's
        raise DataError(f"{where}: cannot be read as {file_format} ({first_line(error)})") from None


def _read_json(path: str) -> pd.DataFrame:
    """A JSON array of records, or JSON Lines (one record a line; `.jsonl`, or a `.json` file written that way)."""
    name = Path(path).name.lower()
    if ".jsonl" in name:
        return pd.read_json(path, lines=True)
    try:
        return pd.read_json(path)
    except ValueError:
        return pd.read_json(path, lines=True)


def _shown(value: object) -> str:
    """repr of a cell, numpy scalars as the Python value they hold (3, not np.int64(3))."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _count(mask: np.ndarray, what: str) -> str:
    count = int(mask.sum())
    return f"{count} {what}{'s' if count > 1 else ''}"


def _rows(mask: np.ndarray, limit: int = 3) -> str:
    """'data row 4' / 'data rows 4, 9, 12, ...' (counting data rows from 1, the header not counted)."""
    rows = (np.flatnonzero(mask) + 1).tolist()
    shown = ", ".join(str(r) for r in rows[:limit]) + (", ..." if len(rows) > limit else "")
    return f"data row{'s' if len(rows) > 1 else ''} {shown}"


def _check_table(where: str, frame: pd.DataFrame, label_column: str) -> None:
    """One DataError line for the first thing in `frame` that cannot make a training or test set."""
    if len(frame.columns) == 0:
        raise DataError(f"{where}: the file has no columns")
    if len(frame) == 0:
        raise DataError(f"{where}: the file has a header ({', '.join(map(str, frame.columns))}) but no rows")
    if label_column not in frame.columns:
        raise DataError(f"{where}: dataset.label_column={label_column!r} is not one of its columns "
                        f"({', '.join(map(str, frame.columns))})")
    if len(frame.columns) == 1:
        raise DataError(f"{where}: the only column is the label {label_column!r}; there are no features")
    _check_label(where, frame[label_column], label_column)
    numeric, categorical = split_columns(frame.drop(columns=[label_column]))
    for column in numeric:
        values = frame[column].to_numpy(np.float64)
        for bad, what in ((np.isnan(values), "missing"), (np.isinf(values), "infinite")):
            if bad.any():
                raise DataError(f"{where}: column {column!r} has {_count(bad, what + ' value')} ({_rows(bad)}): "
                                "fill or drop them")
    for column in categorical:
        _check_text_column(where, frame[column], column)


def _check_text_column(where: str, series: pd.Series, column: str) -> None:
    """A text feature is one-hot encoded: refuse a column of numbers with some text in it, and an id / free text."""
    present = series.notna().to_numpy()
    as_numbers = pd.to_numeric(series, errors="coerce").notna().to_numpy()
    not_numbers = present & ~as_numbers
    if not_numbers.any() and as_numbers[present].mean() > 0.5:
        example = _shown(series[not_numbers].iloc[0])
        raise DataError(f"{where}: column {column!r} holds numbers but also text ({example} at {_rows(not_numbers)}): "
                        "fix or drop those values")
    distinct = int(series.nunique(dropna=True))
    if distinct > max(MIN_CATEGORIES_REFUSED, MAX_CATEGORY_SHARE * len(series)):
        raise DataError(f"{where}: column {column!r} is text with {distinct} distinct values in {len(series)} rows, "
                        "an id or free text rather than a category (one-hot encoding would add a feature per value): "
                        "drop it or turn it into numbers")


def _is_number_label(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


def _check_label(where: str, values: pd.Series, label_column: str) -> None:
    missing = values.isna().to_numpy()
    if missing.any():
        raise DataError(f"{where}: the label column {label_column!r} has {_count(missing, 'missing value')} "
                        f"({_rows(missing)}): fill or drop those rows")
    if _is_number_label(values):
        numbers = values.to_numpy(np.float64)
        fractional = numbers != np.round(numbers)
        if fractional.any():
            raise DataError(f"{where}: the label column {label_column!r} holds non-integer numbers "
                            f"({_shown(numbers[fractional][0])} at {_rows(fractional)}): fedsim trains classifiers; "
                            "give it class labels")


def _labels(values: pd.Series) -> tuple[np.ndarray, int]:
    """Integer labels and the number of classes: integers 0..K-1 stay as they are, other values (text, negative
    integers) become 0..K-1 in sorted order."""
    if _is_number_label(values):
        numbers = values.to_numpy(np.float64)
        if numbers.min() >= 0:
            labels = numbers.astype(np.int64)
            return labels, int(labels.max()) + 1
        keys = numbers
    else:
        keys = values.astype(str).to_numpy()
    classes, labels = np.unique(keys, return_inverse=True)
    return labels.astype(np.int64), len(classes)


def _split_rows(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split, stratified on the label when every class has the rows for it."""
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(labels))
    try:
        train, test = train_test_split(rows, test_size=test_fraction, stratify=labels, random_state=seed)
    except ValueError:  # a class with a single row, or fewer test rows than classes
        train, test = train_test_split(rows, test_size=test_fraction, random_state=seed)
    return np.sort(train), np.sort(test)


def _table_data(path: str, test_path: str | None, file_format: str, test_fraction: float, label_column: str,
                seed: int) -> LoadedData:
    train_where = f"dataset.path={path}"
    frame = _read_table(train_where, path, file_format)
    _check_table(train_where, frame, label_column)
    if test_path:
        test_where = f"dataset.test_path={test_path}"
        test_frame = _read_table(test_where, test_path, file_format)
        _check_table(test_where, test_frame, label_column)
        _check_same_columns(train_where, frame, test_where, test_frame)
        _check_same_kinds(train_where, frame, test_where, test_frame, label_column)
        combined = pd.concat([frame, test_frame[list(frame.columns)]], ignore_index=True)
    else:
        combined = frame
    labels, num_classes = _labels(combined[label_column])  # one class numbering for both files
    if len(np.unique(labels[: len(frame)])) < 2:
        raise DataError(f"{train_where}: the label column {label_column!r} has a single class "
                        f"({_shown(frame[label_column].iloc[0])}); a classifier needs at least two")
    if test_path:
        train_rows, test_rows = np.arange(len(frame)), np.arange(len(frame), len(combined))
    else:
        train_rows, test_rows = _split_rows(labels, test_fraction, seed)
    x = encode_features(combined.drop(columns=[label_column]), train_rows)

    def arrays(rows: np.ndarray) -> ArrayDataset:
        import torch

        return ArrayDataset(torch.from_numpy(x[rows]), torch.from_numpy(labels[rows]))

    train = datasets.Dataset.from_dict({"x": x[train_rows], LABEL: labels[train_rows]})
    return LoadedData(Path(path).name.split(".")[0], train, "x", arrays(train_rows), arrays(test_rows), num_classes)


def _check_same_columns(train_where: str, frame: pd.DataFrame, test_where: str, test_frame: pd.DataFrame) -> None:
    lacking = [str(c) for c in frame.columns if c not in test_frame.columns]
    extra = [str(c) for c in test_frame.columns if c not in frame.columns]
    if lacking or extra:
        parts = (([f"lacks {', '.join(lacking)}"] if lacking else [])
                 + ([f"has {', '.join(extra)} besides"] if extra else []))
        raise DataError(f"{test_where}: its columns differ from {train_where}'s: it {' and '.join(parts)}")


def _check_same_kinds(train_where: str, frame: pd.DataFrame, test_where: str, test_frame: pd.DataFrame,
                      label_column: str) -> None:
    numeric = set(split_columns(frame.drop(columns=[label_column]))[0])
    test_numeric = set(split_columns(test_frame.drop(columns=[label_column]))[0])
    for column in frame.columns:
        if column != label_column and (column in numeric) != (column in test_numeric):
            kinds = ("numbers", "text") if column in numeric else ("text", "numbers")
            raise DataError(f"{test_where}: column {column!r} holds {kinds[1]}, but {kinds[0]} in {train_where}")


def _read_images(where: str, path: str, file_format: str) -> datasets.Dataset:
    try:
        if file_format == "imagefolder":
            return datasets.load_dataset("imagefolder", data_dir=path, split="train")
        return datasets.load_dataset(file_format, data_files=str(path), split="train")
    except Exception as error:  # pylint: disable=broad-exception-caught  # any reader failure is the file's
        raise DataError(f"{where}: cannot be read as {file_format} ({first_line(error)})") from None


def _image_data(path: str, test_path: str | None, file_format: str, test_fraction: float, image_column: str,
                label_column: str, seed: int) -> LoadedData:
    """An image folder, or parquet with an image column (images in Hugging Face's format)."""
    table = _read_images(f"dataset.path={path}", path, file_format)
    if len(table) == 0:
        raise DataError(f"dataset.path={path}: no images")
    table = normalise_columns(table, image_column, label_column, "dataset")
    if test_path:
        test = _read_images(f"dataset.test_path={test_path}", test_path, file_format)
        train, test = table, normalise_columns(test, image_column, label_column, "dataset")
    else:
        parts = table.train_test_split(test_size=test_fraction, seed=seed)
        train, test = parts["train"], parts["test"]
    train_arrays = hf_to_arrays(train, image_column)
    if len(np.unique(train_arrays.y.numpy())) < 2:
        raise DataError(f"dataset.path={path}: the label column {label_column!r} has a single class; "
                        "a classifier needs at least two")
    return LoadedData(
        name=Path(path).stem,
        train=train,
        feature_column=image_column,
        train_arrays=train_arrays,
        test_arrays=hf_to_arrays(test, image_column),
        num_classes=max(num_classes_of(train), num_classes_of(test)),
    )


def load_local_data(
    file_format: str, path: str, test_path: str | None, test_fraction: float, image_column: str, label_column: str,
    seed: int
) -> LoadedData:
    """Read `path` (and `test_path`, else a seeded `test_fraction` of `path`'s rows is the test split)."""
    for key, value in (("dataset.path", path), ("dataset.test_path", test_path)):
        if value and not Path(value).exists():
            raise DataError(f"{key}={value!r} does not exist")
    file_format = resolve_format(file_format, path)
    if file_format == "imagefolder" or (file_format == "parquet" and _has_image_column(path, image_column)):
        return _image_data(path, test_path, file_format, test_fraction, image_column, label_column, seed)
    return _table_data(path, test_path, file_format, test_fraction, label_column, seed)


@dataclass(frozen=True)
class LocalFiles(DatasetLoader):
    """`dataset=local`: a table or images from local files (`format` auto: read off the path)."""

    path: str
    name: str = "local"
    format: str = "auto"
    test_path: str | None = None
    test_fraction: float = 0.2
    image_column: str = "image"
    label_column: str = LABEL

    _parameter_constraints = {
        "path": [str],
        "format": [Options(FORMATS)],
        "test_path": [str, None],
        "test_fraction": [SPLIT_FRACTION],
        "image_column": [str],
        "label_column": [str],
    }

    def load(self, seed: int) -> LoadedData:
        return load_local_data(str(self.format), str(self.path), self.test_path, float(self.test_fraction),
                               str(self.image_column), str(self.label_column), seed)
