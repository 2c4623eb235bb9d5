"""`histogram`: one tensor's histograms at chosen steps, overlaid, in one run or across runs.

The default is the first weight tensor at its first and last captured step:
the weights before and after training. Histograms are drawn as step outlines
(stairs), each normalised to unit area by default, so histograms estimated
from samples of different sizes, or with different bin widths, compare.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from pydantic import Field
from sqlalchemy.orm import Session

from layerwatch import wire
from layerwatch_server.models import SqlHistogram
from layerwatch_server.store import measurements
from layerwatch_server.store.measurements import StepHistogram
from layerwatch_server.store.runs import require_tensor_id
from layerwatch_server.views.base import Part, View, ViewData, ViewParams, no_data
from layerwatch_server.views.distributions import first_tensor, sample_note, usable, value_range
from layerwatch_server.views.legibility import place_legend
from layerwatch_server.wire_schema import Name

MAX_STEPS = 16


class HistogramParams(ViewParams):
    tensor: Name | None = Field(
        None, description="Tensor to show; default: the first of `kind` in network order."
    )
    kind: wire.Kind = "weight"
    rank: int = Field(0, ge=0, le=2**31 - 1)
    step: list[wire.Step] = Field(
        default_factory=list, max_length=MAX_STEPS,
        description="Steps to overlay (repeat); default: the first and the last captured, "
        "and the last captured in each compared run.",
    )  # fmt: skip
    compare: list[wire.Identifier] = Field(
        default_factory=list, max_length=8, description="Other runs to overlay (repeat)."
    )
    density: bool = Field(True, description="Normalise each histogram to unit area.")


class Curve(Part):
    run_id: str
    step: int
    label: str
    edges: list[float] = Field(description="Bin edges, one more than `values`.")
    values: list[float] = Field(description="Density (unit area) or count per bin.")
    count: int = Field(description="Elements binned.")
    sample_size: int | None = Field(description="Elements sampled, or null: every element.")


class HistogramData(ViewData):
    tensor: str | None
    kind: wire.Kind
    density: bool
    curves: list[Curve]


def _nearest(steps: list[int], step: int) -> str:
    if not steps:
        return "none captured"
    index = int(np.searchsorted(steps, step))
    near = sorted({steps[i] for i in (index - 1, index) if 0 <= i < len(steps)})
    return "captured nearby: " + ", ".join(map(str, near))


def _shape(histogram: StepHistogram, density: bool) -> tuple[list[float], list[float], str | None]:
    """(edges, values, note): a histogram of zero-width bins becomes one narrow bin."""
    edges, counts = histogram.edges, histogram.counts.astype(np.float64)
    total = counts.sum()
    note = None
    if not np.all(np.diff(edges) > 0):
        lo, hi = value_range(histogram)
        if hi <= lo:
            note = f"step {histogram.step}: every element equals {lo:.6g}; drawn as one narrow bin"
            pad = 0.005 * max(abs(lo), 1.0)
            lo, hi = lo - pad, hi + pad
        edges, counts = np.array([lo, hi]), np.array([total])
    values = counts / (total * np.diff(edges)) if density else counts
    return edges.tolist(), values.tolist(), note


def compute_histogram(session: Session, run_id: str, params: HistogramParams) -> HistogramData:
    runs = list(dict.fromkeys([run_id, *params.compare]))
    notes: list[str] = []
    curves: list[Curve] = []
    tensor = params.tensor or first_tensor(session, run_id, params.kind, SqlHistogram)
    if tensor is None:
        notes.append(f"the run has no {params.kind} tensors")
        runs = []
    shown: list[StepHistogram] = []
    for run in runs:
        assert tensor is not None
        tensor_id = require_tensor_id(session, run, tensor, params.kind)
        captured = measurements.list_steps(session, SqlHistogram, [tensor_id], rank=params.rank)
        steps = list(params.step)
        if not steps and captured:
            steps = [captured[0], captured[-1]] if run == run_id else [captured[-1]]
        if not captured:
            notes.append(f"{run}: no histograms of {params.kind} `{tensor}`")
        for step in sorted(set(steps) - set(captured)):
            notes.append(f"{run}: no histogram at step {step} ({_nearest(captured, step)})")
        for histogram in measurements.get_histograms_at(
            session, tensor_id, steps=steps, rank=params.rank
        ):
            if not usable(histogram):
                notes.append(f"{run}: step {histogram.step} skipped: empty or non-finite histogram")
                continue
            shown.append(histogram)
            edges, values, note = _shape(histogram, params.density)
            notes += [f"{run}: {note}"] if note else []
            label = f"step {histogram.step}" if len(runs) == 1 else f"{run}: step {histogram.step}"
            if histogram.sample_size is not None:
                label += f" (sampled from {histogram.sample_size})"
            curves.append(Curve(run_id=run, step=histogram.step, label=label, edges=edges,
                                values=values, count=int(histogram.counts.sum()),
                                sample_size=histogram.sample_size))  # fmt: skip
    notes += sample_note(shown)
    title = f"histograms of {params.kind} `{tensor}`" if tensor else f"{params.kind} histograms"
    return HistogramData(view="histogram", run_id=run_id, title=title, notes=notes, tensor=tensor,
                         kind=params.kind, density=params.density, curves=curves)  # fmt: skip


def draw_histogram(figure: Figure, data: HistogramData) -> None:
    axes = figure.add_subplot()
    for curve in data.curves:
        axes.stairs(curve.values, curve.edges, label=curve.label, linewidth=1.5)
    if data.curves:
        place_legend(axes)
        axes.grid(True, alpha=0.3)
    else:
        no_data(axes, "no histograms")
    axes.set_title(data.title)
    axes.set_xlabel("value")
    axes.set_ylabel("density (unit area)" if data.density else "count")


HISTOGRAM = View("histogram", "Histograms of one tensor at chosen steps, across runs.",
                 HistogramParams, HistogramData, compute_histogram, draw_histogram)  # fmt: skip
