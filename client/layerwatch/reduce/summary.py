"""`Summary`: what one capture of one tensor reduces to."""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["Summary"]


class Summary(NamedTuple):
    """What one capture of one tensor reduces to; every tensor is on the input's device."""

    stats: torch.Tensor  # (NUM_STATS,) float32, order of wire.STAT_NAMES
    counts: torch.Tensor | None  # (bins,) int64 histogram over [stats.min, stats.max]
    sample_size: int | None  # elements the histogram was estimated from; None: all
    units: torch.Tensor | None  # (units,) float32 per-unit means
