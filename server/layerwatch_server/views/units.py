"""`dead-units`: units that never fire, per layer over steps, and one layer's unit means.

A unit whose mean over the captured batch is exactly 0 after a ReLU was
inactive on every sample of that batch ("dead"); ``eps`` widens that to
``|mean| <= eps``. The fractions show which layers lose units and when; the
heatmap shows one layer's units (default: the layer with the highest dead
fraction at its latest capture) so that dead ones stand out as flat rows.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from pydantic import Field, model_validator
from sqlalchemy.orm import Session

from layerwatch import wire
from layerwatch_server.models import SqlUnitMean
from layerwatch_server.store import measurements
from layerwatch_server.store.runs import require_tensor_id
from layerwatch_server.views.base import View, ViewData, no_data
from layerwatch_server.views.distributions import (
    StepRangeParams,
    draw_step_heatmap,
    only_with,
    step_edges,
)
from layerwatch_server.views.legibility import (
    HEATMAP_BEYOND,
    Drawn,
    Style,
    label_positions,
    place_legend,
    resolve_style,
)
from layerwatch_server.wire_schema import Name

Floats = npt.NDArray[np.float64]
Part = Literal["fractions", "heatmap", "both"]
MAX_LINES = 32
MAX_ROWS = 512
"""Most layers of the fractions: as lines, and as a heatmap."""


class DeadUnitsParams(StepRangeParams):
    eps: float = Field(0.0, ge=0, allow_inf_nan=False, description="Dead: |mean| <= eps.")
    tensor: Name | None = Field(
        None, description="Layer of the heatmap; default: the highest latest dead fraction."
    )
    max_units: int = Field(256, ge=1, le=wire.MAX_UNITS, description="Units of the heatmap.")
    part: Part = Field("both", description="Dead fractions, a unit heatmap, or both.")
    style: Style = Field(
        "auto", description=f"Fractions as lines, or as a layers-by-steps heatmap; auto: "
        f"lines up to {HEATMAP_BEYOND} layers.",
    )  # fmt: skip

    @model_validator(mode="after")
    def _parts(self) -> DeadUnitsParams:
        only_with(self, ("tensor", "max_units"), "heatmap (`part`)", self.part != "fractions")
        only_with(self, ("style",), "fractions (`part`)", self.part != "heatmap")
        return self


class DeadUnitsData(ViewData):
    part: Part
    eps: float
    style: Drawn = Field(description="How the fractions are drawn.")
    layers: list[str] = Field(description="Activations with unit means, network order.")
    units: list[int] = Field(description="Units per layer.")
    steps: list[int] = Field(description="Steps shown, after thinning.")
    total_steps: int = Field(description="Captured steps in the range, before thinning.")
    fractions: list[list[float]] = Field(
        description="`fractions[i][j]`: dead units of layer i at step j (NaN: not captured)."
    )
    tensor: str | None = Field(description="Layer of the heatmap.")
    tensor_units: int = Field(0, description="Units of that layer, before the `max_units` cap.")
    heatmap: list[list[float]] = Field(description="`heatmap[u][j]`: mean of unit u at step j.")


def _dead_fraction(means: Floats, present: npt.NDArray[np.bool_], eps: float) -> Floats:
    """(steps,) fraction of units with |mean| <= eps; NaN where the step was not captured."""
    if means.shape[1] == 0:
        return np.full(len(present), np.nan)
    with np.errstate(invalid="ignore"):  # NaN means are not dead
        dead = np.abs(means) <= eps
    return np.where(present, dead.mean(axis=1), np.nan)


def _latest(fractions: Floats) -> Floats:
    """Per layer: the fraction at its latest captured step (-1 when never captured)."""
    out = np.full(len(fractions), -1.0)
    for i, row in enumerate(fractions):
        finite = np.flatnonzero(np.isfinite(row))
        if finite.size:
            out[i] = row[finite[-1]]
    return out


def compute_dead_units(session: Session, run_id: str, params: DeadUnitsParams) -> DeadUnitsData:
    notes: list[str] = []
    layers = measurements.list_tensor_ids(session, run_id, kind="activation", table=SqlUnitMean)
    named = None
    if params.tensor is not None:
        named = (params.tensor, require_tensor_id(session, run_id, params.tensor, "activation"))
    if not layers:
        notes.append("the run has no unit means")
    style = resolve_style(params.style, len(layers))
    most = MAX_LINES if style == "lines" else MAX_ROWS
    if len(layers) > most and params.part != "heatmap":
        notes.append(f"the first {most} of {len(layers)} layers")
        layers = layers[:most]
    ids = [i for _, i in layers] + ([named[1]] if named else [])
    captured = measurements.list_steps(session, SqlUnitMean, ids, rank=params.rank,
                                       start=params.start, end=params.end)  # fmt: skip
    steps = measurements.thin_evenly(captured, params.max_steps)
    fractions = np.full((len(layers), len(steps)), np.nan)
    units: list[int] = []
    bad = 0
    if params.part != "heatmap" or named is None:
        for i, (_, tensor_id) in enumerate(layers):  # one layer's means at a time: GPT-2 has
            m, present = measurements.get_unit_means_at(  # 48 layers of 3072 units
                session, tensor_id, steps=steps, rank=params.rank
            )
            units.append(m.shape[1])
            fractions[i] = _dead_fraction(m, present, params.eps)
            bad += int((~np.isfinite(m[present])).sum())
    if bad:
        notes.append(f"{bad} non-finite unit means (counted as not dead)")
    tensor, tensor_units, heatmap = None, 0, np.empty((0, len(steps)))
    if params.part != "fractions":
        if named is None and layers:
            named = layers[int(np.argmax(_latest(fractions)))]
        if named is not None:
            tensor = named[0]
            m, present = measurements.get_unit_means_at(
                session, named[1], steps=steps, rank=params.rank
            )
            tensor_units = m.shape[1]
            heatmap = m[:, : params.max_units].T  # (units, steps)
            if not present.any():
                notes.append(f"no unit means of `{tensor}` in the step range")
            if tensor_units > params.max_units:
                notes.append(f"heatmap: the first {params.max_units} of {tensor_units} units")
    downsampled = len(steps) < len(captured) or tensor_units > params.max_units
    what = "mean = 0" if params.eps == 0 else f"|mean| <= {params.eps:g}"
    return DeadUnitsData(
        view="dead-units", run_id=run_id, title=f"dead units ({what} on the captured batch)",
        downsampled=downsampled, notes=notes, part=params.part, eps=params.eps, style=style,
        layers=[name for name, _ in layers] if params.part != "heatmap" else [],
        units=units if params.part != "heatmap" else [], steps=steps, total_steps=len(captured),
        fractions=fractions.tolist() if params.part != "heatmap" else [], tensor=tensor,
        tensor_units=tensor_units, heatmap=heatmap.tolist(),
    )  # fmt: skip


def _draw_fractions(figure: Figure, data: DeadUnitsData, rows: int) -> None:
    axes = figure.add_subplot(rows, 1, 1)
    axes.set_xlabel("step")
    axes.set_title(f"dead units per layer ({len(data.layers)} layers)", fontsize="medium")
    if data.style == "heatmap":
        values = np.asarray(data.fractions, dtype=np.float64).reshape(-1, len(data.steps))
        y_edges = np.arange(len(data.layers) + 1, dtype=np.float64) - 0.5
        if draw_step_heatmap(figure, axes, data.steps, y_edges, values, log=False,
                             label="fraction dead", cmap="YlOrRd", limits=(0.0, 1.0)):  # fmt: skip
            label_positions(axes, "y", data.layers)
            axes.invert_yaxis()  # network order from the top
        axes.set_ylabel("layer")
        return
    steps = np.asarray(data.steps)
    marker = "o" if len(steps) < 50 else None
    for layer, count, row in zip(data.layers, data.units, data.fractions, strict=True):
        axes.plot(steps, np.asarray(row, dtype=np.float64), marker=marker, markersize=3,
                  label=f"{layer} ({count} units)")  # fmt: skip
    axes.set_ylim(-0.02, 1.02)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel("fraction of units dead")
    axes.grid(True, alpha=0.3)
    place_legend(axes, fontsize="x-small")


def _draw_heatmap(figure: Figure, data: DeadUnitsData, rows: int) -> None:
    axes = figure.add_subplot(rows, 1, rows)
    values = np.asarray(data.heatmap, dtype=np.float64).reshape(-1, len(data.steps))
    shown = len(values)
    capped = f", first {shown} of {data.tensor_units} units" if shown < data.tensor_units else ""
    what = "mean = 0" if data.eps == 0 else f"|mean| <= {data.eps:g}"
    axes.set_title(
        f"unit means of `{data.tensor}`{capped}; black: dead ({what})", fontsize="medium"
    )  # a legend would cover cells
    axes.set_xlabel("step")
    axes.set_ylabel("unit")
    y_edges = np.arange(shown + 1, dtype=np.float64) - 0.5
    finite = values[np.isfinite(values)]
    signed = bool(finite.size and finite.min() < 0)
    if not values.size:
        no_data(axes, "no unit means")
        return
    if not draw_step_heatmap(figure, axes, data.steps, y_edges, values, log=False,
                             label="unit mean", cmap="RdBu_r" if signed else "YlOrRd",
                             symmetric=signed):  # fmt: skip
        return
    with np.errstate(invalid="ignore"):
        dead = np.abs(values) <= data.eps  # NaN: not dead
    if dead.any():  # dead cells in one flat colour, on top
        axes.pcolormesh(step_edges(data.steps), y_edges, np.ma.masked_where(~dead, dead),
                        cmap=ListedColormap(["black"]), shading="flat")  # fmt: skip


def draw_dead_units(figure: Figure, data: DeadUnitsData) -> None:
    suffix = " (downsampled)" if data.downsampled else ""
    figure.suptitle(data.title + suffix)
    if not data.steps:
        no_data(figure.add_subplot(), "no unit means")
        return
    rows = 2 if data.part == "both" else 1
    if data.part != "heatmap":
        _draw_fractions(figure, data, rows)
    if data.part != "fractions":
        _draw_heatmap(figure, data, rows)


DEAD_UNITS = View("dead-units", "Dead units per layer over steps, and one layer's unit means.",
                  DeadUnitsParams, DeadUnitsData, compute_dead_units, draw_dead_units)  # fmt: skip
