"""Table cells the bench scripts share: mean ± population std over seeds."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def mean_std(values: Sequence[float], digits: int = 3) -> str:
    return f"{statistics.mean(values):.{digits}f} ± {statistics.pstdev(values):.{digits}f}"
