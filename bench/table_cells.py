"""Table cells the bench scripts share: mean ± population std over seeds (the formatter lives in fedsim, where
`fedsim compare` uses it too)."""

from __future__ import annotations

from fedsim.compare.table import mean_std

__all__ = ["mean_std"]
