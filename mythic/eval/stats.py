"""Means with standard errors, the one estimator every report row uses.

    mean = Σ x_i / N,    SE = s / √N,    s² = Σ (x_i − mean)² / (N − 1)

For 0/1 outcomes (exact match, pass@1 with one sample) this is √(p(1 − p) / (N − 1)); across
seeds it is the spread of the seeds' means. Below two values there is no error (None).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and standard error (sample std, ddof 1, over √N); the error is None below two values."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    return mean, statistics.stdev(values) / math.sqrt(len(values))


def metric(values: Sequence[float]) -> dict[str, float | int | None]:
    """``{"value", "stderr", "n"}`` of ``values`` (the shape of every metric in a results JSON)."""
    mean, se = mean_and_stderr(values)
    return {"value": mean, "stderr": se, "n": len(values)}
