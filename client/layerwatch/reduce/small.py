"""Small CPU tensors summarised with NumPy, on the reducer thread.

A bias or a 10-class output has a few hundred elements: reducing it costs nothing
but the calls, and a PyTorch call costs several microseconds of dispatch where a
NumPy call on a small array costs about one. A small MLP's capture has about ten
such tensors, which took a third of the reducer's time through PyTorch. The
numbers are those of `statistics.Summarizer` (sums accumulate in float64 here,
which is, if anything, more exact); tensors holding NaN or inf take the general
path.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from layerwatch.reduce.summary import Summary
from layerwatch.wire import MAX_UNITS

__all__ = ["SMALL", "relative_change_small", "summarize_small"]

SMALL = 8192
"""Tensors of at most this many elements take the NumPy path."""


def summarize_small(x: torch.Tensor, *, units: int | None, bins: int | None) -> Summary | None:
    """`Summarizer.summarize` of float32 CPU `x` (not empty, at most `SMALL` elements,
    never sampled); None when it holds a non-finite value."""
    array = x.detach().numpy()
    flat = array.reshape(-1)
    lo, hi = float(flat.min()), float(flat.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    n = flat.size
    wide = flat.astype(np.float64)
    mean = float(wide.sum()) / n
    sum_sq = float(np.dot(wide, wide))
    deviation = wide - mean
    values = [
        mean, math.sqrt(float(np.dot(deviation, deviation)) / n), lo, hi,
        float(np.abs(wide).sum()) / n, math.sqrt(sum_sq),
        (n - int(np.count_nonzero(flat))) / n, 0.0, float(n),
    ]  # fmt: skip
    stats = torch.tensor(values, dtype=torch.float32)
    counts = None
    if bins is not None:
        width = hi - lo if hi > lo else math.inf  # lo == hi: everything in bin 0
        index = ((wide - lo) / width * bins).astype(np.int64)  # floor: all >= 0
        np.clip(index, 0, bins - 1, out=index)
        counts = torch.from_numpy(np.bincount(index, minlength=bins))
    means = None
    if units is not None:
        kept = (
            array if array.shape[units] <= MAX_UNITS else array.take(range(MAX_UNITS), axis=units)
        )
        others = tuple(d for d in range(array.ndim) if d != units)
        means = torch.from_numpy(kept.mean(axis=others, dtype=np.float64).astype(np.float32))
    return Summary(stats, counts, None, means)


def relative_change_small(
    new: torch.Tensor, old: torch.Tensor, old_norm: torch.Tensor
) -> torch.Tensor:
    """`||new - old|| / old_norm` of small float32 CPU tensors, as a 0-d float32 tensor
    (`x / 0` is inf and `0 / 0` NaN, as in PyTorch)."""
    difference = (new.detach().numpy().astype(np.float64) - old.detach().numpy()).ravel()
    norm = torch.tensor(math.sqrt(float(np.dot(difference, difference))), dtype=torch.float32)
    ratio: torch.Tensor = norm / old_norm.to(torch.float32)
    return ratio
