"""`distributions`: one tensor's histograms over steps, as percentile bands and a heatmap.

The bands are TensorBoard's distributions: at each captured step, the values
at the percentiles of a normal distribution's min, -1.5, -1, -0.5 sigma,
median, +0.5, +1, +1.5 sigma and max, read off the stored histogram's
cumulative counts (linear within a bin). The heatmap re-bins every step's
histogram onto one value grid spanning all shown steps (mass spread evenly
within a stored bin), so the columns compare.

This module also draws the step-axis heatmaps the other views share.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.colorbar import Colorbar
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from pydantic import Field, model_validator
from sqlalchemy.orm import Session

from layerwatch import wire
from layerwatch_server.models import SqlHistogram
from layerwatch_server.store import measurements
from layerwatch_server.store.measurements import StepHistogram
from layerwatch_server.store.runs import require_tensor_id
from layerwatch_server.views.base import View, ViewData, ViewParams, no_data
from layerwatch_server.views.legibility import place_legend
from layerwatch_server.wire_schema import Name

Floats = npt.NDArray[np.float64]
PERCENTILES = (0.0, 6.68, 15.87, 30.85, 50.0, 69.15, 84.13, 93.32, 100.0)
BAND_LABELS = ("min to max", r"$\pm1.5\sigma$ (6.7-93.3%)", r"$\pm1\sigma$ (15.9-84.1%)",
               r"$\pm0.5\sigma$ (30.9-69.1%)")  # fmt: skip
Mode = Literal["bands", "heatmap", "both"]


class StepRangeParams(ViewParams):
    rank: int = Field(0, ge=0, le=2**31 - 1)
    start: int | None = Field(None, ge=0, le=wire.MAX_INT64, description="First step shown.")
    end: int | None = Field(None, ge=0, le=wire.MAX_INT64, description="Last step shown.")
    max_steps: int = Field(
        200, ge=2, le=2000, description="Thin to this many steps, evenly, first and last kept."
    )

    @model_validator(mode="after")
    def _ordered(self) -> StepRangeParams:
        if self.start is not None and self.end is not None and self.start > self.end:
            raise ValueError(f"`start` ({self.start}) is after `end` ({self.end})")
        return self


def only_with(params: ViewParams, names: Sequence[str], part: str, allowed: bool) -> None:
    """Refuse parameters set (to other than their default) for a part that is not drawn.

    Compared with the defaults, not ``model_fields_set``: the PNG route rebuilds
    the parameters with every field given.
    """
    fields = type(params).model_fields
    given = [name for name in names if getattr(params, name) != fields[name].get_default()]
    if given and not allowed:
        raise ValueError(f"`{given[0]}` applies only when the {part} is drawn")


class DistributionsParams(StepRangeParams):
    tensor: Name | None = Field(
        None, description="Tensor to show; default: the first of `kind` in network order."
    )
    kind: wire.Kind = "activation"
    mode: Mode = Field("both", description="Percentile bands, a heatmap, or both.")
    bins: int = Field(64, ge=8, le=256, description="Value bins of the heatmap.")
    log: bool = Field(False, description="Logarithmic colour scale of the heatmap.")

    @model_validator(mode="after")
    def _heatmap_only(self) -> DistributionsParams:
        only_with(self, ("bins", "log"), "heatmap (`mode`)", self.mode != "bands")
        return self


class DistributionsData(ViewData):
    tensor: str | None
    kind: wire.Kind
    mode: Mode
    steps: list[int] = Field(description="Steps shown, after thinning.")
    total_steps: int = Field(description="Steps with a histogram in the range, before thinning.")
    sample_sizes: list[int | None] = Field(description="Per step: elements sampled, or null.")
    percentiles: list[float] = Field(description="The percentiles of `bands`, in percent.")
    bands: list[list[float]] = Field(description="`bands[i][j]`: percentile i at step j.")
    value_edges: list[float] = Field(description="Edges of the heatmap's value bins.")
    heatmap: list[list[float]] = Field(
        description="`heatmap[j][k]`: fraction of elements at step j in value bin k."
    )
    log: bool


def first_tensor(
    session: Session, run_id: str, kind: str, table: measurements.MeasurementTable
) -> str | None:
    """The first tensor of ``kind`` in network order, preferring ones with rows in ``table``."""
    with_rows = measurements.list_tensor_ids(session, run_id, kind=kind, table=table)
    if with_rows:
        return with_rows[0][0]
    every = measurements.list_tensor_ids(session, run_id, kind=kind)
    return every[0][0] if every else None


def usable(histogram: StepHistogram) -> bool:
    return bool(histogram.counts.sum() > 0 and np.isfinite(histogram.edges).all())


def value_range(histogram: StepHistogram) -> tuple[float, float]:
    """Left edge of the first non-empty bin and right edge of the last."""
    nonempty = np.flatnonzero(histogram.counts)
    return float(histogram.edges[nonempty[0]]), float(histogram.edges[nonempty[-1] + 1])


def histogram_percentiles(histogram: StepHistogram, percents: Sequence[float]) -> Floats:
    """Values at ``percents`` of a histogram, linear within the bin where each falls."""
    counts, edges = histogram.counts, histogram.edges
    cumulative = np.cumsum(counts)  # (bins,)
    lo, _ = value_range(histogram)
    targets = np.asarray(percents, dtype=np.float64) / 100.0 * cumulative[-1]
    index = np.minimum(np.searchsorted(cumulative, targets, side="left"), len(counts) - 1)
    before = np.where(index > 0, cumulative[np.maximum(index - 1, 0)], 0)
    fraction = (targets - before) / np.maximum(counts[index], 1)
    values = edges[index] + np.clip(fraction, 0.0, 1.0) * (edges[index + 1] - edges[index])
    return np.where(targets <= 0, lo, values)


def rebin(histogram: StepHistogram, grid: Floats) -> Floats:
    """Fraction of the histogram's elements in each bin of ``grid`` (edges, increasing)."""
    counts = histogram.counts.astype(np.float64)
    edges = histogram.edges
    total = counts.sum()
    if np.all(np.diff(edges) > 0):
        cumulative = np.concatenate(([0.0], np.cumsum(counts)))
        mass: Floats = np.diff(np.interp(grid, edges, cumulative))
    else:  # zero-width bins (a constant tensor): each bin's mass sits at its middle
        middle = (edges[:-1] + edges[1:]) / 2
        index = np.clip(np.searchsorted(grid, middle, side="right") - 1, 0, len(grid) - 2)
        mass = np.bincount(index, weights=counts, minlength=len(grid) - 1).astype(np.float64)
    return np.asarray(mass / total, dtype=np.float64)


def common_grid(histograms: Sequence[StepHistogram], bins: int) -> Floats:
    ranges = [value_range(h) for h in histograms]
    lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
    if hi <= lo:
        pad = 0.01 * max(abs(lo), 1.0)
        lo, hi = lo - pad, hi + pad
    return np.linspace(lo, hi, bins + 1)


def sample_note(histograms: Sequence[StepHistogram]) -> list[str]:
    sampled = [h.sample_size for h in histograms if h.sample_size is not None]
    if not sampled:
        return []
    sizes = f"{min(sampled)}" if min(sampled) == max(sampled) else f"{min(sampled)}-{max(sampled)}"
    return [f"{len(sampled)} of {len(histograms)} histograms are estimated from a uniform "
            f"random sample of {sizes} elements"]  # fmt: skip


def compute_distributions(
    session: Session, run_id: str, params: DistributionsParams
) -> DistributionsData:
    notes: list[str] = []
    tensor = params.tensor or first_tensor(session, run_id, params.kind, SqlHistogram)
    histograms: list[StepHistogram] = []
    total = kept = 0
    if tensor is None:
        notes.append(f"the run has no {params.kind} tensors")
    else:
        tensor_id = require_tensor_id(session, run_id, tensor, params.kind)
        captured = measurements.list_steps(
            session, SqlHistogram, [tensor_id], rank=params.rank,
            start=params.start, end=params.end,
        )  # fmt: skip
        total = len(captured)
        steps = measurements.thin_evenly(captured, params.max_steps)
        kept = len(steps)
        found = measurements.get_histograms_at(session, tensor_id, steps=steps, rank=params.rank)
        histograms = [h for h in found if usable(h)]
        if len(histograms) < len(found):
            skipped = [h.step for h in found if not usable(h)]
            notes.append(f"{len(skipped)} steps skipped: empty or non-finite histogram "
                         f"(steps {', '.join(map(str, skipped[:10]))})")  # fmt: skip
        if not captured:
            notes.append(f"no histograms of {params.kind} `{tensor}` in the step range")
    notes += sample_note(histograms)
    bands: list[list[float]] = []
    grid: Floats = np.empty(0)
    heatmap: list[list[float]] = []
    if histograms and params.mode != "heatmap":
        table = np.array([histogram_percentiles(h, PERCENTILES) for h in histograms])
        bands = table.T.tolist()
    if histograms and params.mode != "bands":
        grid = common_grid(histograms, params.bins)
        heatmap = [rebin(h, grid).tolist() for h in histograms]
    title = f"distribution of {params.kind} `{tensor}`" if tensor else f"{params.kind} distribution"
    return DistributionsData(
        view="distributions", run_id=run_id, title=title, downsampled=kept < total, notes=notes,
        tensor=tensor, kind=params.kind,
        mode=params.mode, steps=[h.step for h in histograms], total_steps=total,
        sample_sizes=[h.sample_size for h in histograms], percentiles=list(PERCENTILES),
        bands=bands, value_edges=grid.tolist(), heatmap=heatmap, log=params.log,
    )  # fmt: skip


def step_edges(steps: Sequence[int]) -> Floats:
    """Cell edges around each step for a heatmap: halfway to the neighbours."""
    s = np.asarray(steps, dtype=np.float64)
    if len(s) == 1:
        return np.array([s[0] - 0.5, s[0] + 0.5])
    middle = (s[1:] + s[:-1]) / 2
    return np.concatenate(([2 * s[0] - middle[0]], middle, [2 * s[-1] - middle[-1]]))


def draw_step_heatmap(
    figure: Figure,
    axes: Axes,
    steps: Sequence[int],
    y_edges: Floats,
    values: Floats,
    *,
    log: bool,
    label: str,
    cmap: str = "viridis",
    symmetric: bool = False,
    limits: tuple[float, float] | None = None,
) -> Colorbar | None:
    """``values`` (rows along y, columns per step) as coloured cells with a labelled colour bar.

    Non-finite cells, and non-positive ones on a log scale, stay blank; ``limits``
    fixes a linear colour scale's ends. Returns the colour bar, or None when
    nothing was drawn.
    """
    shown = np.where(np.isfinite(values), values, np.nan)
    if log:
        shown = np.where(shown > 0, shown, np.nan)
    finite = shown[np.isfinite(shown)]
    if finite.size == 0:
        no_data(axes, "no finite data")
        return None
    lo, hi = float(finite.min()), float(finite.max())
    norm: Normalize
    if limits is not None:
        norm = Normalize(vmin=limits[0], vmax=limits[1])
    elif log:
        norm = LogNorm(vmin=lo, vmax=hi if hi > lo else lo * 10)
    elif symmetric and lo < 0 < hi:
        bound = max(-lo, hi)
        norm = Normalize(vmin=-bound, vmax=bound)
    else:
        norm = Normalize(vmin=lo, vmax=hi if hi > lo else lo + max(abs(lo), 1.0))
    mesh = axes.pcolormesh(step_edges(steps), y_edges, np.ma.masked_invalid(shown), norm=norm,
                           cmap=cmap, shading="flat")  # fmt: skip
    colorbar = figure.colorbar(mesh, ax=axes, label=label)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    return colorbar


def _draw_bands(axes: Axes, data: DistributionsData) -> None:
    steps = np.asarray(data.steps, dtype=np.float64)
    bands = np.asarray(data.bands, dtype=np.float64)  # (9, steps)
    if len(steps) == 1:  # one step: a narrow block instead of an invisible sliver
        steps, bands = np.array([steps[0] - 0.5, steps[0] + 0.5]), np.repeat(bands, 2, axis=1)
    middle = len(PERCENTILES) // 2
    for k, label in enumerate(BAND_LABELS):
        axes.fill_between(steps, bands[k], bands[-1 - k], color="tab:orange",
                          alpha=0.15 + 0.15 * k, linewidth=0, label=label)  # fmt: skip
    axes.plot(steps, bands[middle], color="tab:red", linewidth=1.2, label="median")
    axes.set_ylabel("value")
    place_legend(axes, fontsize="x-small", inside=0)  # the bands fill the axes


def draw_distributions(figure: Figure, data: DistributionsData) -> None:
    suffix = " (downsampled)" if data.downsampled else ""
    if not data.steps:
        axes = figure.add_subplot()
        no_data(axes, "no histograms")
        axes.set_title(data.title + suffix)
        return
    panels = ["bands", "heatmap"] if data.mode == "both" else [data.mode]
    all_axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for axes, panel in zip(all_axes, panels, strict=True):
        if panel == "bands":
            _draw_bands(axes, data)
            axes.set_title("percentiles over steps", fontsize="medium")
        else:
            values = np.asarray(data.heatmap, dtype=np.float64).T  # (bins, steps)
            draw_step_heatmap(figure, axes, data.steps, np.asarray(data.value_edges), values,
                              log=data.log, label="fraction of elements")  # fmt: skip
            axes.set_ylabel("value")
            axes.set_title("histogram per step", fontsize="medium")
        axes.grid(True, alpha=0.3)
    all_axes[-1].set_xlabel("step")
    all_axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.suptitle(data.title + suffix)


DISTRIBUTIONS = View("distributions",
                     "Distributions of one tensor over steps: percentile bands and a heatmap.",
                     DistributionsParams, DistributionsData, compute_distributions,
                     draw_distributions)  # fmt: skip
