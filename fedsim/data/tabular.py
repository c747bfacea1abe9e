"""Tabular features as one float matrix: what `dataset=adult` and `dataset=local` (CSV, parquet, JSON) share.

Numeric columns are standardised with the training rows' mean and std (the test rows must not leak into them);
text (categorical) columns are one-hot encoded, a missing value being a category of its own. One-hot columns are
built over every row, training and test, so both splits have the same columns in the same (sorted) order.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

MISSING = "missing"


def split_columns(features: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(numeric columns, categorical columns) in the frame's order; booleans count as numeric (0/1)."""
    numeric = [c for c in features.columns if pd.api.types.is_numeric_dtype(features[c])]
    return numeric, [c for c in features.columns if c not in numeric]


def encode_features(features: pd.DataFrame, train_rows: np.ndarray) -> np.ndarray:
    """float32 matrix: the numeric columns (standardised on `train_rows`), then every categorical column one-hot.

    A numeric NaN ends up 0 (the training mean) after standardisation; a constant column stays 0.
    """
    numeric, categorical = split_columns(features)
    parts = [features[numeric].to_numpy(np.float64)]
    if categorical:
        labels = features[categorical].apply(
            lambda column: column.astype(object).where(column.notna(), MISSING).astype(str))
        parts.append(pd.get_dummies(labels, dtype=np.float32).to_numpy(np.float64))
    values = np.concatenate(parts, axis=1)
    mean, std = values[train_rows, : len(numeric)].mean(0), values[train_rows, : len(numeric)].std(0)
    values[:, : len(numeric)] = (values[:, : len(numeric)] - mean) / np.where(std > 0, std, 1.0)
    return np.nan_to_num(values).astype(np.float32)
