"""`scatter`: a probed layer's activations on the probe samples in 2-D, coloured by class.

A layer of exactly two features is drawn as it is; any other is projected
with PCA. With ``grid=true`` the same layer is drawn at every probe step (up
to ``max_panels``) through ONE projection fitted on all the panels' points
together, on shared axes, so that panels compare: a cluster that moves moved.

This module also holds what the probe views share: picking the probe and the
layer from the parameters (defaults that render for any run, named ones that
must exist), the 2-D projection, and points coloured by class.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from layerwatch import wire
from layerwatch_server import store
from layerwatch_server.errors import InvalidQuery, NotFound
from layerwatch_server.schemas import ProbeLayerSummary, ProbeSummary
from layerwatch_server.store.probe_arrays import ProbeArrays, load_probe
from layerwatch_server.views.base import View, ViewData, ViewParams, no_data

MAX_LEGEND_CLASSES = 20
FIT_VALUES = 4_000_000
"""Most feature values (points x features) a PCA is fitted on; more are thinned evenly."""
GRID_VALUES = 8_000_000
"""Most feature values a grid holds at once; fewer points per panel beyond that."""
SKLEARN_MISSING = "scikit-learn is not installed on the server: pip install 'layerwatch[demo]'"
ColourBy = Literal["label", "prediction", "none"]


# -- what the probe views share ------------------------------------------------------


class ProbeParams(ViewParams):
    rank: int = Field(0, ge=0, le=2**31 - 1, description="Rank whose probes to show.")
    step: int | None = Field(
        None, ge=0, le=wire.MAX_INT64, description="Probe step; default: the latest probe."
    )


@dataclass(frozen=True)
class ProbeChoice:
    """The probe (and layer) a view shows; `probe` None (with a `note`) when there is none."""

    probes: list[ProbeSummary]
    probe: ProbeSummary | None
    layer: str | None
    note: str = ""


def features_per_sample(layer: ProbeLayerSummary) -> int:
    return math.prod(layer.features_shape[1:])


def narrowest_hidden_layer(layers: list[ProbeLayerSummary]) -> str:
    """Of the layers before the output, the one of fewest features; ties to the later one."""
    best, *rest = layers[:-1] or layers
    for layer in rest:
        if features_per_sample(layer) <= features_per_sample(best):
            best = layer
    return best.name


def last_hidden_layer(layers: list[ProbeLayerSummary]) -> str:
    """The layer before the output (the only layer when there is one)."""
    return layers[-2].name if len(layers) >= 2 else layers[0].name


def choose_probe(
    session: Session,
    run_id: str,
    *,
    rank: int,
    step: int | None,
    layer: str | None,
    default_layer: Callable[[list[ProbeLayerSummary]], str] | None,
) -> ProbeChoice:
    """The probe at `step` (default: the latest one that has `layer`) and the layer to show.

    A named step or layer that does not exist is a `NotFound` naming it; with
    defaults only, a run without probes gives a choice without a probe.
    """
    probes = store.list_probes(session, run_id, rank=rank).data
    if step is not None:
        chosen = next((probe for probe in probes if probe.step == step), None)
        if chosen is None:
            raise NotFound(f"`step`: run `{run_id}` has no probe at step {step} (rank {rank})")
    elif layer is not None and default_layer is not None:
        having = [p for p in probes if any(item.name == layer for item in p.layers)]
        if not having:
            raise NotFound(f"`layer`: run `{run_id}` has no probed layer `{layer}` (rank {rank})")
        chosen = having[-1]
    elif probes:
        chosen = probes[-1]
    else:
        return ProbeChoice(
            probes,
            None,
            None,
            f"run `{run_id}` has no probes (rank {rank}): see `watch(probe=...)`",
        )
    if default_layer is None:
        return ProbeChoice(probes, chosen, None)
    if layer is not None:
        if all(item.name != layer for item in chosen.layers):
            raise NotFound(f"`layer`: the probe at step {chosen.step} has no layer `{layer}`")
        return ProbeChoice(probes, chosen, layer)
    if not chosen.layers:
        return ProbeChoice(probes, None, None, f"the probe at step {chosen.step} has no layers")
    return ProbeChoice(probes, chosen, default_layer(chosen.layers))


def feature_rows(features: np.ndarray) -> np.ndarray:
    """(samples, ...) features as (samples, features) float64."""
    return features.reshape(len(features), -1).astype(np.float64)


def even_indices(count: int, keep: int) -> np.ndarray:
    """At most `keep` indices of `count`, evenly spread, first and last included."""
    if count <= keep:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, keep).round().astype(np.int64))


def take(values: np.ndarray | None, indices: np.ndarray) -> list[int] | None:
    """`values` (labels, predictions) of the samples at `indices`, or None."""
    return None if values is None else [int(v) for v in values[indices]]


def colour_values(probe: ProbeArrays) -> tuple[ColourBy, np.ndarray | None]:
    """What points are coloured by: labels, else predictions, else nothing."""
    if probe.labels is not None:
        return "label", probe.labels
    if probe.predictions is not None:
        return "prediction", probe.predictions
    return "none", None


@dataclass(frozen=True)
class Projection:
    kind: Literal["features", "feature", "pca"]
    axes: tuple[str, str]
    explained: list[float] | None
    note: str = ""


def project(blocks: Sequence[np.ndarray]) -> tuple[list[np.ndarray], Projection]:
    """Blocks of finite (n_i, F) rows to (n_i, 2), all through one projection.

    Two features are kept as they are, one is drawn along x; more are fitted
    by one PCA on (an even thinning of) all the rows together.
    """
    width = blocks[0].shape[1]
    if width == 2:
        return [block.copy() for block in blocks], Projection(
            "features", ("feature 0", "feature 1"), None
        )
    if width == 1:
        flat = [np.column_stack([block[:, 0], np.zeros(len(block))]) for block in blocks]
        return flat, Projection(
            "feature", ("feature 0", ""), None, "the layer has one feature: drawn along x"
        )
    rows = np.concatenate(blocks)
    fit = rows[even_indices(len(rows), max(2, FIT_VALUES // width))]
    if len(fit) < 2 or not np.ptp(fit, axis=0).any():
        zeros = [np.zeros((len(block), 2)) for block in blocks]
        return zeros, Projection(
            "pca", ("PC1", "PC2"), None, "the samples' features are all equal: nothing to project"
        )
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2, svd_solver="full").fit(fit)
    ratio = [float(value) for value in pca.explained_variance_ratio_]
    note = f"PCA fitted on {len(fit)} of {len(rows)} points" if len(fit) < len(rows) else ""
    labels = (f"PC1 ({ratio[0]:.1%} of variance)", f"PC2 ({ratio[1]:.1%} of variance)")
    return [pca.transform(block) for block in blocks], Projection("pca", labels, ratio, note)


def class_colour(index: int, count: int) -> tuple[float, float, float, float]:
    colours = matplotlib.colormaps["tab10" if count <= 10 else "tab20"]
    rgba: tuple[float, float, float, float] = colours(index % colours.N)
    return rgba


def plot_classes(
    axes: Axes, x: np.ndarray, y: np.ndarray, values: list[int] | None, classes: list[int]
) -> ScalarMappable | None:
    """Points coloured by class (grey without classes); a colour map past 20 classes."""
    size = 14 if len(x) <= 500 else 5
    if values is None or not classes:
        axes.scatter(x, y, s=size, color="grey", alpha=0.7, linewidths=0)
        return None
    ids = np.asarray(values)
    if len(classes) > MAX_LEGEND_CLASSES:
        return axes.scatter(
            x, y, c=ids, cmap="viridis", vmin=min(classes), vmax=max(classes), s=size, linewidths=0
        )
    for index, value in enumerate(classes):
        mask = ids == value
        if mask.any():
            colour = class_colour(index, len(classes))
            axes.scatter(x[mask], y[mask], s=size, color=colour, alpha=0.8, linewidths=0)
    return None


def class_legend(
    figure: Figure, axes: list[Axes], classes: list[int], by: str, mappable: ScalarMappable | None
) -> None:
    """One legend entry per class, or a colour bar when there are too many."""
    if by == "none" or not classes:
        return
    if mappable is not None:
        figure.colorbar(mappable, ax=axes, label=by)
        return
    handles = [
        Line2D(
            [], [], linestyle="", marker="o", color=class_colour(i, len(classes)), label=str(value)
        )
        for i, value in enumerate(classes)
    ]
    figure.legend(handles=handles, loc="outside right upper", title=by, fontsize="small")


# -- the scatter view ----------------------------------------------------------------


class ScatterParams(ProbeParams):
    layer: wire.Name | None = Field(
        None, description="Probed layer; default: the narrowest layer before the output."
    )
    grid: bool = Field(False, description="The layer at every probe step, one projection.")
    max_panels: int = Field(12, ge=1, le=64, description="Most steps in a grid (thinned evenly).")
    max_points: int = Field(
        2000, ge=10, le=wire.MAX_PROBE_SAMPLES, description="Most samples per panel."
    )


class ScatterPanel(BaseModel):
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
    axis_labels: tuple[str, str] = ("", "")
    color_by: ColourBy = "none"
    classes: list[int] = Field(default_factory=list)
    xlim: tuple[float, float] | None = None
    ylim: tuple[float, float] | None = None
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
