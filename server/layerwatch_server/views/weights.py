"""`weight-change`: how far each weight moves, per capture, per update and since the start.

Three panels over steps, one line per weight tensor, log scale: the relative
change since the previous capture, the update-to-weight ratio of the step's
own optimizer update (with the common rule of thumb of about 1e-3 drawn for
reference), and the relative change since ``watch()``. A NaN change at a
tensor's first capture, and a zero change since the start there, are what
the client sends by definition, not problems.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from pydantic import Field
from sqlalchemy.orm import Session

from layerwatch_server.models import SqlWeightChange
from layerwatch_server.store import measurements
from layerwatch_server.store.runs import require_tensor_id
from layerwatch_server.views.base import Part, View, ViewData, no_data
from layerwatch_server.views.distributions import StepRangeParams, draw_step_heatmap
from layerwatch_server.views.legibility import (
    HEATMAP_BEYOND,
    Drawn,
    Style,
    label_positions,
    place_legend,
    resolve_style,
)
from layerwatch_server.views.tensors import leave_out_biases
from layerwatch_server.wire_schema import Name

MAX_LINES = 32
MAX_ROWS = 512
"""Most weight tensors drawn by default: as lines, and as heatmaps."""
REFERENCE_RATIO = 1e-3
Metric = Literal["since_prev", "update_ratio", "since_init"]
METRICS: tuple[Metric, ...] = ("since_prev", "update_ratio", "since_init")
LABELS: dict[str, tuple[str, str]] = {
    "since_prev": ("relative change since the previous capture", "||W - W_prev|| / ||W_prev||"),
    "update_ratio": ("update-to-weight ratio of the step's update", "||update|| / ||W||"),
    "since_init": ("relative change since watch()", "||W - W_0|| / ||W_0||"),
}


class WeightChangeParams(StepRangeParams):
    tensor: list[Name] = Field(
        default_factory=list, max_length=MAX_LINES,
        description="Weight tensors to draw (repeat); default: every weight in network order.",
    )  # fmt: skip
    bias: bool = Field(
        False, description="Include biases (`fc.bias`, an LSTM's `bias_ih_l0`) by default."
    )
    metric: list[Metric] = Field(
        default_factory=lambda: list(METRICS), min_length=1, max_length=3,
        description="Panels to draw (repeat): since_prev, update_ratio, since_init.",
    )  # fmt: skip
    style: Style = Field(
        "auto", description=f"A line per tensor, or a tensors-by-steps heatmap per panel; "
        f"auto: lines up to {HEATMAP_BEYOND} tensors.",
    )  # fmt: skip


class Panel(Part):
    metric: Metric
    title: str
    ylabel: str
    values: list[list[float]] = Field(description="`values[i][j]`: layer i at step j.")
    reference: float | None = Field(None, description="A dashed reference line's value.")


class WeightChangeData(ViewData):
    style: Drawn = Field(description="How the panels are drawn.")
    layers: list[str]
    steps: list[int] = Field(description="Steps shown, after thinning.")
    total_steps: int = Field(description="Captured steps in the range, before thinning.")
    panels: list[Panel]


def _tensors(session: Session, run_id: str, params: WeightChangeParams,
             notes: list[str]) -> tuple[list[tuple[str, int]], Drawn]:  # fmt: skip
    if params.tensor:
        names = list(dict.fromkeys(params.tensor))
        return [(name, require_tensor_id(session, run_id, name, "weight")) for name in names
                ], resolve_style(params.style, len(names))  # fmt: skip
    tensors = measurements.list_tensor_ids(session, run_id, kind="weight", table=SqlWeightChange)
    if not params.bias:
        tensors = leave_out_biases(tensors, notes, "bias parameters")
    style = resolve_style(params.style, len(tensors))
    most = MAX_LINES if style == "lines" else MAX_ROWS
    if len(tensors) > most:
        notes.append(f"the first {most} of {len(tensors)} weight tensors")
        tensors = tensors[:most]
    return tensors, style


def compute_weight_change(
    session: Session, run_id: str, params: WeightChangeParams
) -> WeightChangeData:
    notes: list[str] = []
    tensors, style = _tensors(session, run_id, params, notes)
    ids = [i for _, i in tensors]
    captured = measurements.list_steps(session, SqlWeightChange, ids, rank=params.rank,
                                       start=params.start, end=params.end)  # fmt: skip
    if not captured:
        notes.append("no weight changes recorded" + (" in the step range" if tensors else ""))
    steps = measurements.thin_evenly(captured, params.max_steps)
    table = measurements.get_weight_change_table(session, ids, steps=steps, rank=params.rank)
    first = measurements.first_steps(session, SqlWeightChange, ids, rank=params.rank)
    # (layers, steps): True at each tensor's very first capture, where NaN / 0 is by definition
    at_first = np.array([[first.get(i) == s for s in steps] for i in ids], dtype=bool)
    at_first = at_first.reshape(len(ids), len(steps))
    present = np.isfinite(table["present"])
    panels: list[Panel] = []
    for metric in dict.fromkeys(params.metric):
        values = table[metric]
        expected = at_first & (np.isnan(values) if metric == "since_prev" else values == 0)
        bad = int((present & ~np.isfinite(values) & ~expected).sum())
        nonpositive = int((present & np.isfinite(values) & (values <= 0) & ~expected).sum())
        if metric == "update_ratio" and present.any() and not np.isfinite(values[present]).any():
            notes.append("update_ratio: unknown (NaN) everywhere: without an optimizer passed "
                         "to watch(), the client cannot see the step's own update")  # fmt: skip
        elif bad:
            notes.append(f"{metric}: {bad} non-finite values left out of the plot")
        if nonpositive:
            notes.append(f"{metric}: {nonpositive} zero or negative values left out (log scale)")
        title, ylabel = LABELS[metric]
        reference = REFERENCE_RATIO if metric == "update_ratio" else None
        panels.append(Panel(metric=metric, title=title, ylabel=ylabel, values=values.tolist(),
                            reference=reference))  # fmt: skip
    return WeightChangeData(
        view="weight-change", run_id=run_id, title="weight change per layer", style=style,
        downsampled=len(steps) < len(captured), notes=notes, layers=[n for n, _ in tensors],
        steps=steps, total_steps=len(captured), panels=panels,
    )  # fmt: skip


def draw_weight_change(figure: Figure, data: WeightChangeData) -> None:
    suffix = " (downsampled)" if data.downsampled else ""
    figure.suptitle(data.title + suffix)
    if not data.steps:
        no_data(figure.add_subplot(), "no weight changes")
        return
    all_axes = figure.subplots(len(data.panels), 1, sharex=True, squeeze=False)[:, 0]
    if data.style == "heatmap":
        for axes, panel in zip(all_axes, data.panels, strict=True):
            _draw_panel_heatmap(figure, axes, data, panel)
        all_axes[-1].set_xlabel("step")
        return
    steps = np.asarray(data.steps)
    marker = "o" if len(steps) < 50 else None
    for index, (axes, panel) in enumerate(zip(all_axes, data.panels, strict=True)):
        drawn = False
        for layer, row in zip(data.layers, panel.values, strict=True):
            values = np.asarray(row, dtype=np.float64)
            shown = np.where(np.isfinite(values) & (values > 0), values, np.nan)
            axes.plot(steps, shown, marker=marker, markersize=3, label=layer)
            drawn = drawn or bool(np.isfinite(shown).any())
        axes.set_title(panel.title, fontsize="medium")
        axes.set_ylabel(panel.ylabel, fontsize="small")
        axes.grid(True, alpha=0.3)
        if not drawn:
            no_data(axes, "no positive finite values")
            continue
        axes.set_yscale("log")
        line = None
        if panel.reference is not None:
            line = axes.axhline(panel.reference, color="black", linestyle="--", linewidth=1,
                                label=f"{panel.reference:g}: common rule of thumb")  # fmt: skip
        if index == 0:  # the layers' legend, once
            place_legend(axes, fontsize="x-small", figure=figure)
        elif line is not None:
            axes.legend(handles=[line], loc="best", fontsize="x-small")
    all_axes[-1].set_xlabel("step")
    all_axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))


def _draw_panel_heatmap(figure: Figure, axes: Axes, data: WeightChangeData, panel: Panel) -> None:
    """One row per tensor in network order, log colour; a reference is marked on the bar."""
    values = np.asarray(panel.values, dtype=np.float64).reshape(-1, len(data.steps))
    y_edges = np.arange(len(data.layers) + 1, dtype=np.float64) - 0.5
    axes.set_title(panel.title, fontsize="medium")
    colorbar = draw_step_heatmap(figure, axes, data.steps, y_edges, values, log=True,
                                 label=panel.ylabel, cmap="magma")  # fmt: skip
    if colorbar is None:
        return
    colorbar.ax.yaxis.label.set_fontsize("x-small")
    label_positions(axes, "y", data.layers, fontsize="x-small")
    axes.invert_yaxis()  # network order from the top
    low, high = colorbar.ax.get_ylim()
    if panel.reference is not None and low <= panel.reference <= high:
        colorbar.ax.axhline(panel.reference, color="white", linestyle="--", linewidth=1.5)
        axes.set_title(f"{panel.title} (dashed: {panel.reference:g}, rule of thumb)",
                       fontsize="medium")  # fmt: skip


WEIGHT_CHANGE = View("weight-change",
                     "How far each weight moves: per capture, per update and since the start.",
                     WeightChangeParams, WeightChangeData, compute_weight_change,
                     draw_weight_change)  # fmt: skip
