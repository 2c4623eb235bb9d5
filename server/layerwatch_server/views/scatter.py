"""`scatter`: a probed layer's activations on the probe samples in 2-D, coloured by class.

A layer of exactly two features is drawn as it is; any other is projected
with PCA. With ``grid=true`` the same layer is drawn at every probe step (up
to ``max_panels``) through ONE projection fitted on all the panels' points
together, on shared axes, so that panels compare: a cluster that moves moved.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from pydantic import Field
from sqlalchemy.orm import Session

from layerwatch import wire
from layerwatch_server.errors import InvalidQuery
from layerwatch_server.store.probe_arrays import load_probe
from layerwatch_server.views.base import FloatPair, Part, StrPair, View, ViewData, no_data
from layerwatch_server.views.probing import (
    GRID_VALUES,
    SKLEARN_MISSING,
    ColourBy,
    ProbeParams,
    choose_probe,
    class_legend,
    even_indices,
    feature_rows,
    narrowest_hidden_layer,
    plot_classes,
    project,
    take,
)
from layerwatch_server.wire_schema import Name

# -- the scatter view ----------------------------------------------------------------


class ScatterParams(ProbeParams):
    layer: Name | None = Field(
        None, description="Probed layer; default: the narrowest layer before the output."
    )
    grid: bool = Field(False, description="The layer at every probe step, one projection.")
    max_panels: int = Field(12, ge=1, le=64, description="Most steps in a grid (thinned evenly).")
    max_points: int = Field(
        2000, ge=10, le=wire.MAX_PROBE_SAMPLES, description="Most samples per panel."
    )


class ScatterPanel(Part):
    step: int
    samples: list[int] = Field(description="Index of each point's probe sample.")
    x: list[float]
    y: list[float]
    labels: list[int] | None
    predictions: list[int] | None
    nonfinite: int = Field(0, description="Samples left out for non-finite features.")


class ScatterData(ViewData):
    layer: str | None = None
    projection: Literal["features", "feature", "pca"] | None = None
    explained_variance_ratio: list[float] | None = None
    axis_labels: StrPair = ("", "")
    color_by: ColourBy = "none"
    classes: list[int] = Field(default_factory=list)
    xlim: FloatPair | None = None
    ylim: FloatPair | None = None
    grid: bool = False
    panels: list[ScatterPanel] = Field(default_factory=list)


def _limits(values: np.ndarray) -> tuple[float, float]:
    low, high = float(values.min()), float(values.max())
    margin = (high - low) * 0.05 or 1.0
    return low - margin, high + margin


def compute_scatter(session: Session, run_id: str, params: ScatterParams) -> ScatterData:
    if params.grid and params.step is not None:
        raise InvalidQuery("`step`: a grid shows every probe step; leave `step` out")
    choice = choose_probe(session, run_id, rank=params.rank, step=params.step,
                          layer=params.layer, default_layer=narrowest_hidden_layer)  # fmt: skip
    if choice.probe is None or choice.layer is None:
        return ScatterData(view="scatter", run_id=run_id, title="scatter", notes=[choice.note])
    layer, notes = choice.layer, []
    shape = next(item.features_shape for item in choice.probe.layers if item.name == layer)
    steps = [choice.probe.step]
    downsampled = False
    if params.grid:
        steps = [
            p.step
            for p in choice.probes
            if any(i.name == layer and i.features_shape == shape for i in p.layers)
        ]
        if len(steps) < sum(any(i.name == layer for i in p.layers) for p in choice.probes):
            notes.append(f"steps where `{layer}` has another shape than {shape} are left out")
        shown = [steps[i] for i in even_indices(len(steps), params.max_panels)]
        if len(shown) < len(steps):
            downsampled = True
            notes.append(f"{len(shown)} of {len(steps)} probe steps, evenly spread")
        steps = shown
    width = math.prod(shape[1:])
    per_panel = max(10, min(params.max_points, GRID_VALUES // (len(steps) * max(width, 1))))
    blocks, panels = [], []
    for step in steps:
        probe = load_probe(session, run_id, step, rank=params.rank, layers=[layer])
        keep = even_indices(probe.samples, per_panel)
        downsampled = downsampled or len(keep) < probe.samples
        rows = feature_rows(probe.layers[layer].features)[keep]
        finite = np.isfinite(rows).all(axis=1)
        kept = keep[finite]
        blocks.append(rows[finite])
        panels.append(ScatterPanel(step=step, samples=kept.tolist(), x=[], y=[],
                                   labels=take(probe.labels, kept),
                                   predictions=take(probe.predictions, kept),
                                   nonfinite=int((~finite).sum())))  # fmt: skip
    title = f"layer {layer} " + ("over probe steps" if params.grid else f"at step {steps[0]}")
    title += " (downsampled)" if downsampled else ""
    notes += [
        f"step {p.step}: {p.nonfinite} samples with non-finite features left out"
        for p in panels
        if p.nonfinite
    ]
    if per_panel < params.max_points and per_panel < choice.probe.samples:
        notes.append(f"at most {per_panel} points per panel, to bound the work")
    if not sum(len(block) for block in blocks):
        return ScatterData(view="scatter", run_id=run_id, title=title, layer=layer,
                           notes=[*notes, "no sample has finite features"])  # fmt: skip
    try:
        coordinates, projection = project(blocks)
    except ImportError:
        return ScatterData(view="scatter", run_id=run_id, title=title, layer=layer,
                           notes=[SKLEARN_MISSING])  # fmt: skip
    if projection.note:
        notes.append(projection.note)
    for panel, xy in zip(panels, coordinates, strict=True):
        panel.x, panel.y = xy[:, 0].tolist(), xy[:, 1].tolist()
    by: ColourBy = "none"
    if all(p.predictions is not None for p in panels):
        by = "prediction"
    if all(p.labels is not None for p in panels):
        by = "label"
    values = [(p.labels if by == "label" else p.predictions) or [] for p in panels]
    points = np.concatenate(coordinates)
    return ScatterData(
        view="scatter", run_id=run_id, title=title, downsampled=downsampled, notes=notes,
        layer=layer, projection=projection.kind, explained_variance_ratio=projection.explained,
        axis_labels=projection.axes, color_by=by,
        classes=sorted({v for panel in values for v in panel}) if by != "none" else [],
        xlim=_limits(points[:, 0]), ylim=_limits(points[:, 1]), grid=params.grid, panels=panels,
    )  # fmt: skip


def draw_scatter(figure: Figure, data: ScatterData) -> None:
    """One panel, or a grid of panels on shared axes; a legend of classes beside them."""
    if not any(panel.x for panel in data.panels):
        axes = figure.add_subplot()
        no_data(axes, "; ".join(data.notes[-1:]) or "no data")
        axes.set_title(data.title)
        return
    columns = math.ceil(math.sqrt(len(data.panels)))
    rows = math.ceil(len(data.panels) / columns)
    grid = figure.subplots(rows, columns, squeeze=False, sharex=True, sharey=True)
    flat: list[Axes] = list(grid.flat)
    mappable = None
    for axes, panel in zip(flat, data.panels, strict=False):
        values = panel.labels if data.color_by == "label" else panel.predictions
        values = values if data.color_by != "none" else None
        mappable = plot_classes(axes, np.asarray(panel.x), np.asarray(panel.y), values,
                                data.classes)  # fmt: skip
        if data.xlim is not None and data.ylim is not None:
            axes.set_xlim(data.xlim)
            axes.set_ylim(data.ylim)
        axes.grid(True, alpha=0.3)
        if data.grid:
            axes.set_title(f"step {panel.step}", fontsize="small")
    for axes in flat[len(data.panels) :]:
        axes.set_visible(False)
    if data.grid:
        figure.suptitle(data.title)
        figure.supxlabel(data.axis_labels[0])
        figure.supylabel(data.axis_labels[1])
    else:
        flat[0].set_title(data.title)
        flat[0].set_xlabel(data.axis_labels[0])
        flat[0].set_ylabel(data.axis_labels[1])
    class_legend(figure, flat[: len(data.panels)], data.classes, data.color_by, mappable)


SCATTER = View("scatter", "A probed layer's activations in 2-D (PCA), coloured by class.",
               ScatterParams, ScatterData, compute_scatter, draw_scatter)  # fmt: skip
