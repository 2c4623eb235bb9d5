"""Thinning long series for display without hiding spikes."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

MIN_POINTS = 4


def envelope_indices(values: npt.NDArray[np.float64], max_points: int) -> npt.NDArray[np.intp]:
    """Indices of at most ``max_points`` points keeping the series' shape.

    The first and last points are always kept; the points between them are
    cut into equal buckets, and each bucket keeps its smallest and largest
    finite value (a bucket of only NaN keeps one NaN, so gaps stay visible).
    The result is sorted, so steps stay in order.
    """
    if max_points < MIN_POINTS:
        raise ValueError(f"max_points must be at least {MIN_POINTS}")
    n = len(values)
    if n <= max_points:
        return np.arange(n)
    buckets = (max_points - 2) // 2
    inner = np.arange(1, n - 1)
    bucket = (inner - 1) * buckets // (n - 2)  # (n - 2,) bucket index per inner point
    v = values[inner]
    nan = np.isnan(v)
    low_key = np.where(nan, np.inf, v)
    high_key = np.where(nan, np.inf, -v)
    starts = np.flatnonzero(np.r_[True, np.diff(bucket) != 0])  # bucket is non-decreasing
    lows = np.lexsort((low_key, bucket))[starts]
    highs = np.lexsort((high_key, bucket))[starts]
    return np.unique(np.concatenate(([0, n - 1], inner[lows], inner[highs])))
