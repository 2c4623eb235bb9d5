"""`gradient-flow`: how large each layer's gradients are, at one step and over steps.

Vanishing gradients show as bars that shrink from the output back to the
input; exploding ones as a heatmap that brightens over steps. Both use a log
scale, where a zero cannot be drawn: zeros are drawn clipped at a floor below
the smallest positive value (and said so), never silently dropped. NaN and
infinite statistics are counted in the notes and left out of the drawing.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt
from matplotlib.figure import Figure
from pydantic import Field, model_validator
from sqlalchemy.orm import Session

from layerwatch import wire
from layerwatch_server.models import SqlStat
from layerwatch_server.store import measurements
from layerwatch_server.views.base import View, ViewData, no_data
from layerwatch_server.views.distributions import StepRangeParams, draw_step_heatmap, only_with
from layerwatch_server.views.legibility import label_positions, legend_above
from layerwatch_server.views.tensors import leave_out_biases

Floats = npt.NDArray[np.float64]
Part = Literal["bars", "heatmap", "both"]


class GradientFlowParams(StepRangeParams):
    step: wire.Step | None = Field(None, description="Step of the bars; default: the latest.")
    bias: bool = Field(
        False, description="Include gradients of biases (`fc.bias`, an LSTM's `bias_ih_l0`)."
    )
    part: Part = Field("both", description="Bars at one step, a heatmap over steps, or both.")

    @model_validator(mode="after")
    def _parts(self) -> GradientFlowParams:
        only_with(self, ("step",), "bar chart (`part`)", self.part != "heatmap")
        only_with(self, ("max_steps",), "heatmap (`part`)", self.part != "bars")
        return self


class GradientFlowData(ViewData):
    part: Part
    layers: list[str] = Field(description="Gradient tensors in network order.")
    step: int | None = Field(description="Step of the bars.")
    abs_mean: list[float] = Field(description="Per layer at `step`: mean |grad|.")
    abs_max: list[float] = Field(description="Per layer at `step`: max(|min|, |max|).")
    steps: list[int] = Field(description="Steps of the heatmap, after thinning.")
    total_steps: int = Field(description="Captured steps in the range, before thinning.")
    heatmap: list[list[float]] = Field(description="`heatmap[i][j]`: mean |grad| of layer i.")
    floor: float | None = Field(description="Where zeros are drawn on the log scale.")


def _count_bad(values: Floats, present: Floats) -> int:
    return int((~np.isfinite(values) & np.isfinite(present)).sum())


def compute_gradient_flow(
    session: Session, run_id: str, params: GradientFlowParams
) -> GradientFlowData:
    notes: list[str] = []
    tensors = measurements.list_tensor_ids(session, run_id, kind="grad", table=SqlStat)
    if not params.bias:
        tensors = leave_out_biases(tensors, notes, "bias gradients")
    ids = [i for _, i in tensors]
    captured = measurements.list_steps(session, SqlStat, ids, rank=params.rank,
                                       start=params.start, end=params.end)  # fmt: skip
    if not tensors:
        notes.append("the run has no gradient statistics")
    bad = 0
    step, abs_mean, abs_max = None, np.empty(0), np.empty(0)
    if params.part != "heatmap" and captured:
        step = params.step if params.step is not None else captured[-1]
        if step not in captured:
            notes.append(f"no gradient statistics at step {step}")
        table = measurements.get_stat_table(session, ids, stats=("abs_mean", "min", "max"),
                                            steps=[step], rank=params.rank)  # fmt: skip
        present = table["present"][:, 0]
        abs_mean = table["abs_mean"][:, 0]
        abs_max = np.maximum(np.abs(table["min"][:, 0]), np.abs(table["max"][:, 0]))
        bad += _count_bad(abs_mean, present) + _count_bad(abs_max, present)
    with_heatmap = params.part != "bars"
    steps = measurements.thin_evenly(captured, params.max_steps) if with_heatmap else []
    heatmap = np.empty((len(ids), 0))
    if with_heatmap and steps:
        table = measurements.get_stat_table(session, ids, stats=("abs_mean",),
                                            steps=steps, rank=params.rank)  # fmt: skip
        heatmap = table["abs_mean"]
        bad += _count_bad(heatmap, table["present"])
    if bad:
        notes.append(f"{bad} non-finite gradient statistics left out of the drawing")
    shown = np.concatenate([abs_mean, abs_max, heatmap.ravel()])
    positive = shown[np.isfinite(shown) & (shown > 0)]
    zeros = int((shown == 0).sum())
    floor = None
    if zeros:
        floor = float(positive.min()) / 10 if positive.size else 1e-12
        notes.append(f"{zeros} zero values drawn clipped at {floor:.3g} on the log scale")
    return GradientFlowData(
        view="gradient-flow", run_id=run_id, title="gradient flow",
        downsampled=with_heatmap and len(steps) < len(captured), notes=notes, part=params.part,
        layers=[name for name, _ in tensors], step=step, abs_mean=abs_mean.tolist(),
        abs_max=abs_max.tolist(), steps=steps, total_steps=len(captured),
        heatmap=heatmap.tolist() if with_heatmap else [], floor=floor,
    )  # fmt: skip


def _clipped(values: Floats, floor: float | None) -> Floats:
    """Zeros raised to ``floor``; non-finite and negative values become NaN (not drawn)."""
    out = np.where(np.isfinite(values) & (values > 0), values, np.nan)
    if floor is not None:
        out = np.where(values == 0, floor, out)
    return out


def _draw_bars(figure: Figure, data: GradientFlowData) -> None:
    axes = figure.add_subplot(*_grid(data), 1)
    x = np.arange(len(data.layers), dtype=np.float64)
    lowest = np.inf
    for offset, name, values in ((-0.2, "mean |grad|", data.abs_mean),
                                 (0.2, "max |grad|", data.abs_max)):  # fmt: skip
        raw = np.asarray(values, dtype=np.float64)
        heights = _clipped(raw, data.floor)
        keep = np.isfinite(heights)
        if keep.any():
            bars = axes.bar(x[keep] + offset, heights[keep], width=0.4, label=name)
            for bar, zero in zip(bars, raw[keep] == 0, strict=True):
                bar.set_hatch("//" if zero else "")
            lowest = min(lowest, float(heights[keep].min()))
    label_positions(axes, "x", data.layers, rotation=30)
    axes.set_xlim(-0.6, len(data.layers) - 0.4)
    axes.set_xlabel(f"layer ({len(data.layers)} in network order)")
    axes.set_title(f"at step {data.step}", fontsize="medium", loc="left")
    if np.isfinite(lowest):
        axes.set_yscale("log")
        axes.set_ylim(bottom=10 ** np.floor(np.log10(lowest) - 1e-9))  # bars start a decade low
        axes.set_ylabel("|gradient| (log)")
        legend_above(axes)
        axes.grid(True, axis="y", alpha=0.3)
    else:
        no_data(axes, "no finite gradients")


def _grid(data: GradientFlowData) -> tuple[int, int]:
    return (2, 1) if data.part == "both" else (1, 1)


def draw_gradient_flow(figure: Figure, data: GradientFlowData) -> None:
    suffix = " (downsampled)" if data.downsampled else ""
    figure.suptitle(data.title + suffix)
    if not data.layers or data.total_steps == 0:
        no_data(figure.add_subplot(), "no gradient statistics")
        return
    if data.part != "heatmap":
        _draw_bars(figure, data)
    if data.part != "bars":
        axes = figure.add_subplot(*_grid(data), _grid(data)[0])
        values = _clipped(np.asarray(data.heatmap, dtype=np.float64), data.floor)
        y_edges = np.arange(len(data.layers) + 1, dtype=np.float64) - 0.5
        if draw_step_heatmap(figure, axes, data.steps, y_edges, values, log=True,
                             label="mean |grad| (log)"):  # fmt: skip
            label_positions(axes, "y", data.layers)
            axes.invert_yaxis()  # network order from the top
        axes.set_xlabel("step")
        axes.set_ylabel("layer")
        axes.set_title("mean |grad| over steps", fontsize="medium")


GRADIENT_FLOW = View("gradient-flow",
                     "Gradient size per layer: bars at one step and a heatmap over steps.",
                     GradientFlowParams, GradientFlowData, compute_gradient_flow,
                     draw_gradient_flow)  # fmt: skip
