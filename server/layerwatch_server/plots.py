"""Rendering series to PNG with matplotlib's object API.

Only ``Figure`` and the Agg canvas are used: pyplot keeps global state that
leaks figures in a long-lived server and is not thread-safe.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


@dataclass(frozen=True)
class Line:
    label: str
    steps: Sequence[int]
    values: Sequence[float]


def render_lines_png(
    lines: Sequence[Line],
    *,
    title: str,
    ylabel: str,
    xlabel: str = "step",
    logy: bool = False,
    width: int = 900,
    height: int = 500,
    dpi: int = 100,
) -> bytes:
    """Lines over steps as PNG bytes; non-finite points leave gaps and are counted."""
    figure = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for line in lines:
        values = np.asarray(line.values, dtype=np.float64)
        finite = np.isfinite(values)
        label = line.label
        if not finite.all():
            label += f" ({int((~finite).sum())} non-finite)"
        if logy:
            finite &= values > 0
        shown = np.where(finite, values, np.nan)
        marker = "o" if len(values) < 50 else None
        axes.plot(np.asarray(line.steps), shown, label=label, marker=marker, markersize=3)
    if logy and any(np.any(np.asarray(line.values) > 0) for line in lines):
        axes.set_yscale("log")
    if not lines or all(len(line.steps) == 0 for line in lines):
        axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(True, alpha=0.3)
    if lines:
        axes.legend(loc="best", fontsize="small")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
