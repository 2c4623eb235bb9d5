"""`series` and `scalars`: statistics and logged scalars over steps, one or many runs."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from pydantic import Field
from sqlalchemy.orm import Session

from layerwatch import wire
from layerwatch_server import store
from layerwatch_server.views.base import Part, View, ViewData, ViewParams, no_data
from layerwatch_server.views.legibility import place_legend
from layerwatch_server.wire_schema import Name

MAX_LINES = 32
RunList = list[wire.Identifier]


class Line(Part):
    run_id: str
    label: str
    steps: list[int]
    values: list[float]
    total: int = Field(description="Points in the step range before downsampling.")
    downsampled: bool


class LinesData(ViewData):
    ylabel: str
    logy: bool
    lines: list[Line]


class _LineParams(ViewParams):
    compare: RunList = Field(
        default_factory=list, max_length=16, description="Other runs to overlay (repeat)."
    )
    rank: int = Field(0, ge=0, le=2**31 - 1)
    start: int | None = Field(None, ge=0, le=wire.MAX_INT64)
    end: int | None = Field(None, ge=0, le=wire.MAX_INT64)
    logy: bool = Field(False, description="Logarithmic y axis (non-positive points left out).")
    max_points: int = Field(2000, ge=4, le=20_000, description="Per line; min/max envelope.")


class SeriesParams(_LineParams):
    tensor: list[Name] = Field(
        default_factory=list,
        max_length=MAX_LINES,
        description="Tensors to draw (repeat); default: every tensor of `kind`.",
    )
    kind: wire.Kind = "activation"
    stat: wire.StatName = "mean"


class ScalarsParams(_LineParams):
    name: list[Name] = Field(
        default_factory=list,
        max_length=MAX_LINES,
        description="Scalars to draw (repeat); default: every scalar of the run.",
    )


def _label(run_id: str, name: str, runs: list[str]) -> str:
    return name if len(runs) == 1 else f"{run_id}: {name}"


def compute_series(session: Session, run_id: str, params: SeriesParams) -> LinesData:
    runs = [run_id, *params.compare]
    notes: list[str] = []
    lines: list[Line] = []
    for run in runs:
        names = list(params.tensor)
        if not names:
            names = [t.name for t in store.list_tensors(session, run, kind=params.kind).data]
            if len(names) > MAX_LINES:
                notes.append(f"{run}: the first {MAX_LINES} of {len(names)} tensors")
                names = names[:MAX_LINES]
        for name in names:
            series = store.get_series(
                session, run, tensor=name, kind=params.kind, stat=params.stat, rank=params.rank,
                start=params.start, end=params.end, max_points=params.max_points,
            )  # fmt: skip
            lines.append(Line(run_id=run, label=_label(run, name, runs), steps=series.steps,
                              values=series.values, total=series.total,
                              downsampled=series.downsampled))  # fmt: skip
    return _lines_data("series", run_id, f"{params.kind} {params.stat}", params.stat,
                       params.logy, lines, notes)  # fmt: skip


def compute_scalars(session: Session, run_id: str, params: ScalarsParams) -> LinesData:
    runs = [run_id, *params.compare]
    lines: list[Line] = []
    for run in runs:
        names = list(params.name) or store.list_scalar_names(session, run).data[:MAX_LINES]
        for name in names:
            series = store.get_scalar_series(
                session, run, name=name, rank=params.rank, start=params.start, end=params.end,
                max_points=params.max_points,
            )  # fmt: skip
            lines.append(Line(run_id=run, label=_label(run, name, runs), steps=series.steps,
                              values=series.values, total=series.total,
                              downsampled=series.downsampled))  # fmt: skip
    title = ", ".join(params.name) if params.name else "scalars"
    return _lines_data("scalars", run_id, title, "value", params.logy, lines, [])


def _lines_data(view: str, run_id: str, title: str, ylabel: str, logy: bool, lines: list[Line],
                notes: list[str]) -> LinesData:  # fmt: skip
    if not lines:
        what = "logged scalars (`run.log`)" if view == "scalars" else f"{title.split()[0]} tensors"
        notes.append(f"no {what} recorded for the runs shown")
    elif not any(line.steps for line in lines):
        notes.append("no points in the step range asked for")
    for line in lines:
        bad = int((~np.isfinite(np.asarray(line.values, dtype=np.float64))).sum())
        if bad:
            notes.append(f"{line.label}: {bad} non-finite values left out of the plot")
    return LinesData(view=view, run_id=run_id, title=title, ylabel=ylabel, logy=logy,
                     lines=lines, notes=notes,
                     downsampled=any(line.downsampled for line in lines))  # fmt: skip


def draw_lines(figure: Figure, data: LinesData) -> None:
    """Lines over steps; non-finite points leave gaps, and the legend counts them."""
    axes = figure.add_subplot()
    drawn = False
    for line in data.lines:
        values = np.asarray(line.values, dtype=np.float64)
        finite = np.isfinite(values)
        label = line.label
        if not finite.all():
            label += f" ({int((~finite).sum())} non-finite)"
        if data.logy:
            finite &= values > 0
        shown = np.where(finite, values, np.nan)
        marker = "o" if len(values) < 50 else None
        axes.plot(np.asarray(line.steps), shown, label=label, marker=marker, markersize=3)
        drawn = drawn or bool(finite.any())
    if data.logy and drawn:
        axes.set_yscale("log")
    if not drawn:
        no_data(axes, "no finite data" if data.lines else "no data")
    axes.set_title(data.title + (" (downsampled)" if data.downsampled else ""))
    axes.set_xlabel("step")
    axes.set_ylabel(data.ylabel)
    axes.grid(True, alpha=0.3)
    if data.lines:
        place_legend(axes)


SERIES = View("series", "A statistic over steps for one or many tensors and runs.",
              SeriesParams, LinesData, compute_series, draw_lines)  # fmt: skip
SCALARS = View("scalars", "Logged scalars (loss, accuracy) over steps, one or many runs.",
               ScalarsParams, LinesData, compute_scalars, draw_lines)  # fmt: skip
