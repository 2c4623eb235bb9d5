"""Keeping plots of large models readable: thinned tick labels, legends beside the axes, and
heatmaps where one line per tensor would be a tangle.

A ResNet has about 60 weight tensors and a 12-block transformer about 150: one
tick label per layer overlaps, a legend of every line covers the plot, and
lines of a hundred layers cannot be told apart. The rules here are shared by
the views: name every k-th layer (k as small as lets the labels fit at the
size the image is drawn), move legends of more than a few entries outside the
axes and name at most `MAX_LEGEND` of them, and draw per-layer series as a
layers-by-steps heatmap beyond `HEATMAP_BEYOND` layers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.axis import Axis, XAxis
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.ticker import FuncFormatter, Locator

Style = Literal["auto", "lines", "heatmap"]
Drawn = Literal["lines", "heatmap"]
MAX_LEGEND = 12
"""Most entries a legend names; a longer one names the first ones and says so."""
MAX_LEGEND_INSIDE = 5
"""Legends with more entries go beside the axes, where they cover nothing."""
HEATMAP_BEYOND = 12
"""Per-layer series of more layers are drawn as a heatmap by default (``style=auto``)."""
LINE_SPACING = 1.4
"""Room a tick label needs across the axis, in font sizes (text height and a gap)."""


def resolve_style(style: Style, count: int) -> Drawn:
    """What `style` draws for `count` series: lines up to `HEATMAP_BEYOND`, else a heatmap."""
    if style == "auto":
        return "lines" if count <= HEATMAP_BEYOND else "heatmap"
    return style


def _axis_length(locator: Locator) -> tuple[Axis, float]:
    """The axis a locator serves and its length on the canvas, in points."""
    axis = locator.axis
    assert isinstance(axis, Axis)
    axes = axis.axes
    pixels = axes.bbox.width if isinstance(axis, XAxis) else axes.bbox.height
    figure = axes.get_figure(root=True)
    assert figure is not None
    return axis, pixels * 72 / figure.dpi


class EveryKth(Locator):
    """Ticks at every k-th of the positions of `labels`, with k as small as lets the labels
    fit side by side; decided at draw time, at the axes' final size and font."""

    def __init__(self, labels: Sequence[str], rotation: float = 0.0) -> None:
        self.labels = list(labels)
        self.count = len(self.labels)
        self.rotation = rotation

    def step(self) -> int:
        """k: 1 when every label fits."""
        axis, length = _axis_length(self)
        font = axis.get_major_ticks(1)[0].label1.get_fontproperties().get_size_in_points()
        room = LINE_SPACING * font
        if isinstance(axis, XAxis) and abs(self.rotation) < 15:  # side by side: their width
            room += 0.6 * font * max((len(label) for label in self.labels), default=0)
        elif isinstance(axis, XAxis):  # parallel labels at angle a: room / sin(a) apart
            room /= math.sin(math.radians(abs(self.rotation)))
        fit = max(1, int(length // room))
        return max(1, math.ceil(self.count / fit))

    def __call__(self) -> Sequence[float]:
        return np.arange(0, self.count, self.step(), dtype=np.float64).tolist()

    def tick_values(self, vmin: float, vmax: float) -> Sequence[float]:
        return self()


class _EveryPosition(Locator):
    """Minor ticks at every position, while they are at least 3 pixels apart."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __call__(self) -> Sequence[float]:
        _, length = _axis_length(self)
        if length < 3 * 72 / 100 * self.count:  # 3 pixels at 100 dpi
            return []
        return np.arange(self.count, dtype=np.float64).tolist()

    def tick_values(self, vmin: float, vmax: float) -> Sequence[float]:
        return self()


def label_positions(
    axes: Axes, which: Literal["x", "y"], labels: Sequence[str], *, rotation: float = 0.0,
    fontsize: str | float = "small",
) -> EveryKth:  # fmt: skip
    """Name positions 0 .. len(labels)-1 of an axis: every label that fits, every k-th when
    they would overlap; each position keeps an unlabelled minor tick."""
    axis = axes.xaxis if which == "x" else axes.yaxis
    locator = EveryKth(labels, rotation)
    axis.set_major_locator(locator)
    names = locator.labels
    axis.set_major_formatter(
        FuncFormatter(lambda x, _: names[round(x)] if 0 <= round(x) < len(names) else "")
    )
    axis.set_minor_locator(_EveryPosition(len(labels)))
    axes.tick_params(axis=which, which="major", labelsize=fontsize, labelrotation=rotation,
                     labelrotation_mode="xtick" if which == "x" else "default")  # fmt: skip
    return locator


def place_legend(axes: Axes, handles: Sequence[Artist] | None = None, *, fontsize: str = "small",
                 inside: int = MAX_LEGEND_INSIDE, figure: Figure | None = None,
                 ) -> Legend | None:  # fmt: skip
    """A legend inside the axes for at most `inside` entries; beside them, naming at most
    `MAX_LEGEND` (the first ones, with a title that says so), for more: beside `figure`
    instead when given, for panels that share the legend."""
    if handles is None:
        handles = axes.get_legend_handles_labels()[0]
    if not handles:
        return None
    if len(handles) <= inside:
        return axes.legend(handles=list(handles), loc="best", fontsize=fontsize)
    shown = list(handles[:MAX_LEGEND])
    title = f"first {len(shown)} of {len(handles)}" if len(shown) < len(handles) else None
    if figure is not None:
        return figure.legend(handles=shown, loc="outside right upper", fontsize="x-small",
                             title=title, title_fontsize="x-small")  # fmt: skip
    return axes.legend(handles=shown, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                       borderaxespad=0.0, fontsize="x-small", title=title,
                       title_fontsize="x-small")  # fmt: skip


def legend_above(axes: Axes, handles: Sequence[Artist] | None = None) -> Legend | None:
    """A legend of a few entries in one row above the axes' right end, beside a title set
    with ``loc="left"``: over a plot that fills its axes it would cover data."""
    if handles is None:
        handles = axes.get_legend_handles_labels()[0]
    if not handles:
        return None
    return axes.legend(handles=list(handles), loc="lower right", bbox_to_anchor=(1.0, 1.0),
                       ncols=len(handles), fontsize="x-small", borderaxespad=0.2,
                       frameon=False)  # fmt: skip
