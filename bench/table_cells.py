"""Table cells the bench scripts share: mean ± population std over seeds, as docs/reproductions.md reports them."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def mean_std(values: Sequence[float], digits: int = 3) -> str:
    """`mean ± population std` of `values`."""
    return f"{statistics.mean(values):.{digits}f} ± {statistics.pstdev(values):.{digits}f}"


__all__ = ["mean_std"]
