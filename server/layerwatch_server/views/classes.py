"""`class-means` and `confusion`: what a probe says about the classes.

``class-means`` is the mean activation of each unit of a layer per class (by
label or by prediction), beside the cosine similarity of those mean vectors:
two classes whose means point the same way are ones the layer barely tells
apart, which is where the network confuses them internally. Convolution
features (samples, channels, h, w) are averaged over space: one unit per
channel. ``confusion`` counts the probe's predictions against its labels.

Labels or predictions missing: a request that names the `step` (or `by`)
gets a 404 saying which is missing; with defaults, a latest probe without
them draws "no data" with that note, so every run renders.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from pydantic import Field
from sqlalchemy.orm import Session

from layerwatch import wire
from layerwatch_server.errors import NotFound
from layerwatch_server.store.probe_arrays import load_probe
from layerwatch_server.views.base import View, ViewData, no_data
from layerwatch_server.views.probing import ProbeParams, choose_probe, last_hidden_layer
from layerwatch_server.wire_schema import Name

MAX_CLASSES = 1000
OTHER = -1
"""The class standing for every class beyond `max_classes` in a confusion matrix."""
MAX_TICKED_CLASSES = 40
MAX_ANNOTATED_CLASSES = 20
MAX_ANNOTATED_SIMILARITY = 10


def _floats(matrix: np.ndarray) -> list[list[float]]:
    return [[float(v) for v in row] for row in matrix]


def _class_ticks(axes: Axes, classes: list[int], *, x: bool, y: bool) -> None:
    if len(classes) > MAX_TICKED_CLASSES:
        return
    ticks, names = range(len(classes)), ["other" if c == OTHER else str(c) for c in classes]
    if x:
        axes.set_xticks(ticks, names, fontsize="small")
    if y:
        axes.set_yticks(ticks, names, fontsize="small")


def _annotate(axes: Axes, matrix: np.ndarray, text: str) -> None:
    """Each cell's value, white on dark cells."""
    finite = matrix[np.isfinite(matrix)]
    middle = (finite.max() + finite.min()) / 2 if finite.size else 0.0
    for (row, column), value in np.ndenumerate(matrix):
        if np.isfinite(value):
            colour = "white" if value > middle else "black"
            axes.text(
                column,
                row,
                format(value, text),
                ha="center",
                va="center",
                fontsize="x-small",
                color=colour,
            )


# -- class-means ----------------------------------------------------------------------


class ClassMeansParams(ProbeParams):
    layer: Name | None = Field(
        None, description="Probed layer; default: the layer before the output."
    )
    by: Literal["label", "prediction"] | None = Field(
        None, description="Group samples by label or by predicted class; default: labels."
    )
    max_units: int = Field(256, ge=1, le=wire.MAX_UNITS, description="Most units drawn.")
    max_classes: int = Field(
        50, ge=1, le=MAX_CLASSES, description="Most classes drawn: the most frequent ones."
    )


class ClassMeansData(ViewData):
    layer: str | None = None
    step: int | None = None
    by: Literal["label", "prediction"] | None = None
    unit_kind: Literal["unit", "channel"] = "unit"
    total_units: int = Field(0, description="Units of the layer; `units` may be the first ones.")
    classes: list[int] = Field(default_factory=list)
    counts: list[int] = Field(default_factory=list, description="Samples of each class.")
    units: list[int] = Field(default_factory=list)
    means: list[list[float]] = Field(default_factory=list, description="classes x units.")
    similarity: list[list[float]] = Field(
        default_factory=list,
        description="Cosine similarity of the classes' mean vectors "
        "over all units (NaN for a zero or non-finite vector).",
    )


def compute_class_means(session: Session, run_id: str, params: ClassMeansParams) -> ClassMeansData:
    choice = choose_probe(
        session,
        run_id,
        rank=params.rank,
        step=params.step,
        layer=params.layer,
        default_layer=last_hidden_layer,
    )
    data = ClassMeansData(view="class-means", run_id=run_id, title="class means")
    if choice.probe is None or choice.layer is None:
        data.notes.append(choice.note)
        return data
    layer, step = choice.layer, choice.probe.step
    probe = load_probe(session, run_id, step, rank=params.rank, layers=[layer])
    by = params.by or ("label" if probe.labels is not None else "prediction")
    groups = probe.labels if by == "label" else probe.predictions
    if groups is None:
        what = (
            "labels"
            if params.by == "label"
            else "predictions"
            if params.by
            else ("labels or predictions")
        )
        message = f"the probe at step {step} has no {what}"
        if params.step is not None or params.by is not None:
            raise NotFound(f"`{'by' if params.by else 'step'}`: {message}")
        data.notes.append(message)
        return data
    features = probe.layers[layer].features
    channels = features.ndim > 2
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        rows = features.reshape(len(features), features.shape[1], -1).astype(np.float64)
        units = rows.mean(axis=2) if channels else rows[:, :, 0]  # (samples, units)
        classes, frequency = np.unique(groups, return_counts=True)
        if len(classes) > params.max_classes:
            data.notes.append(f"the {params.max_classes} most frequent of {len(classes)} classes")
            data.downsampled = True
            classes = np.sort(classes[_most_frequent(frequency, params.max_classes)])
        means = np.stack([units[groups == value].mean(axis=0) for value in classes])
        norms = np.linalg.norm(means, axis=1)
        similarity = (means @ means.T) / np.outer(norms, norms)
    similarity[~np.isfinite(similarity)] = np.nan
    similarity[norms == 0, :] = np.nan  # a zero vector has no direction
    similarity[:, norms == 0] = np.nan
    similarity = np.clip(similarity, -1.0, 1.0)
    shown = min(params.max_units, means.shape[1])
    data.layer, data.step, data.by = layer, step, by
    data.unit_kind = "channel" if channels else "unit"
    data.total_units, data.units = means.shape[1], list(range(shown))
    data.classes = [int(c) for c in classes]
    data.counts = [int((groups == c).sum()) for c in classes]
    data.means, data.similarity = _floats(means[:, :shown]), _floats(similarity)
    data.title = f"layer {layer} at step {step}: class means by {by}"
    if shown < means.shape[1]:
        data.downsampled = True
        data.title += " (downsampled)"
        data.notes.append(f"the first {shown} of {means.shape[1]} {data.unit_kind}s are drawn")
    bad = int((~np.isfinite(units)).sum())
    if bad:
        data.notes.append(f"{bad} non-finite unit values: their class means are NaN or infinite")
    return data


def draw_class_means(figure: Figure, data: ClassMeansData) -> None:
    """Heatmap of classes x units, and the class-by-class cosine similarity beside it."""
    if not data.classes:
        axes = figure.add_subplot()
        axes.set_title(data.title)
        no_data(axes, "; ".join(data.notes[-1:]) or "no data")
        return
    heat, near = figure.subplots(1, 2, width_ratios=[3, 2])
    means = np.ma.masked_invalid(np.asarray(data.means, dtype=np.float64))
    limit = float(np.abs(means).max()) if means.count() else 1.0
    signed = bool(means.count()) and float(means.min()) < 0
    image = heat.imshow(
        means,
        aspect="auto",
        interpolation="nearest",
        cmap="RdBu_r" if signed else "viridis",
        vmin=-limit if signed else None,
        vmax=limit if signed else None,
    )
    figure.colorbar(image, ax=heat, label="mean activation")
    heat.set_xlabel(data.unit_kind)
    heat.set_ylabel(data.by or "class")
    heat.set_title(f"mean activation per {data.unit_kind}", fontsize="medium")
    _class_ticks(heat, data.classes, x=False, y=True)
    similarity = np.asarray(data.similarity, dtype=np.float64)
    image = near.imshow(
        np.ma.masked_invalid(similarity), cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest"
    )
    figure.colorbar(image, ax=near, label="cosine similarity")
    near.set_xlabel(data.by or "class")
    near.set_ylabel(data.by or "class")
    near.set_title("similarity of class means", fontsize="medium")
    _class_ticks(near, data.classes, x=True, y=True)
    if len(data.classes) <= MAX_ANNOTATED_SIMILARITY:
        _annotate(near, similarity, ".2f")
    figure.suptitle(data.title)


CLASS_MEANS = View(
    "class-means",
    "Mean activation per class, and how alike the classes are.",
    ClassMeansParams,
    ClassMeansData,
    compute_class_means,
    draw_class_means,
)


# -- confusion ------------------------------------------------------------------------


class ConfusionParams(ProbeParams):
    normalize: Literal["none", "true", "pred"] = Field(
        "none",
        description="none: counts; true: each true class's row sums to 1; "
        "pred: each predicted class's column sums to 1.",
    )
    max_classes: int = Field(
        50, ge=2, le=MAX_CLASSES,
        description="Most classes drawn: the most frequent ones, the rest as `other` (-1).",
    )  # fmt: skip


class ConfusionData(ViewData):
    step: int | None = None
    normalize: Literal["none", "true", "pred"] = "none"
    samples: int = 0
    classes: list[int] = Field(default_factory=list)
    counts: list[list[int]] = Field(
        default_factory=list, description="Rows true, columns predicted."
    )
    matrix: list[list[float]] = Field(
        default_factory=list,
        description="What is drawn: `counts` normalized (0 for an empty row or column).",
    )
    support: list[int] = Field(default_factory=list, description="Samples of each true class.")
    per_class_accuracy: list[float] = Field(
        default_factory=list, description="Recall of each class (NaN without samples)."
    )
    accuracy: float | None = None


def compute_confusion(session: Session, run_id: str, params: ConfusionParams) -> ConfusionData:
    choice = choose_probe(
        session, run_id, rank=params.rank, step=params.step, layer=None, default_layer=None
    )
    data = ConfusionData(
        view="confusion", run_id=run_id, title="confusion", normalize=params.normalize
    )
    if choice.probe is None:
        data.notes.append(choice.note)
        return data
    step = choice.probe.step
    missing = [
        what
        for what, stored in (
            ("labels", choice.probe.labels),
            ("predictions", choice.probe.predictions),
        )
        if not stored
    ]
    if missing:
        message = f"the probe at step {step} has no {' and no '.join(missing)}"
        if params.step is not None:
            raise NotFound(f"`step`: {message}")
        data.notes.append(message)
        return data
    probe = load_probe(session, run_id, step, rank=params.rank, layers=[])
    assert probe.labels is not None
    assert probe.predictions is not None
    labels, predictions = probe.labels, probe.predictions
    classes, frequency = np.unique(np.concatenate([labels, predictions]), return_counts=True)
    if len(classes) > params.max_classes:  # the most frequent ones, and `other` for the rest
        kept = np.sort(classes[_most_frequent(frequency, params.max_classes - 1)])
        data.notes.append(f"the {len(kept)} most frequent of {len(classes)} classes; "
                          "the others are counted as `other` (-1)")  # fmt: skip
        data.downsampled = True
        labels = np.where(np.isin(labels, kept), labels, OTHER)
        predictions = np.where(np.isin(predictions, kept), predictions, OTHER)
        classes = np.concatenate([[OTHER], kept])
    counts = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(counts, (np.searchsorted(classes, labels), np.searchsorted(classes, predictions)), 1)
    support, hits = counts.sum(axis=1), np.diag(counts)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, hits / support, np.nan)
        axis = {"true": 1, "pred": 0}.get(params.normalize)
        totals = counts.sum(axis=axis, keepdims=True) if axis is not None else 1
        matrix = np.nan_to_num(counts / totals, nan=0.0)
    accuracy = float(hits.sum() / counts.sum())
    data.step, data.samples = step, int(counts.sum())
    data.classes, data.counts = [int(c) for c in classes], counts.tolist()
    data.matrix, data.support = matrix.tolist(), support.tolist()
    data.per_class_accuracy, data.accuracy = [float(v) for v in recall], accuracy
    data.title = f"confusion at step {step}: accuracy {accuracy:.1%} of {data.samples} samples"
    return data


def draw_confusion(figure: Figure, data: ConfusionData) -> None:
    """The matrix (true rows, predicted columns) and each class's recall beside it."""
    if not data.classes:
        axes = figure.add_subplot()
        axes.set_title(data.title)
        no_data(axes, "; ".join(data.notes[-1:]) or "no data")
        return
    grid, bars = figure.subplots(1, 2, width_ratios=[3, 1])
    matrix = np.asarray(data.matrix, dtype=np.float64)
    label = {
        "none": "samples",
        "true": "fraction of the true class",
        "pred": "fraction of the predicted class",
    }[data.normalize]
    image = grid.imshow(
        matrix,
        cmap="Blues",
        interpolation="nearest",
        vmin=0,
        vmax=None if data.normalize == "none" else 1,
    )
    figure.colorbar(image, ax=grid, label=label)
    grid.set_xlabel("predicted class")
    grid.set_ylabel("true class")
    _class_ticks(grid, data.classes, x=True, y=True)
    if len(data.classes) <= MAX_ANNOTATED_CLASSES:
        _annotate(grid, matrix, ".0f" if data.normalize == "none" else ".2f")
    grid.set_title(data.title, fontsize="medium")
    recall = np.asarray(data.per_class_accuracy, dtype=np.float64)
    rows = np.arange(len(data.classes))
    bars.barh(rows[np.isfinite(recall)], recall[np.isfinite(recall)], color="tab:blue")
    if data.accuracy is not None:
        bars.axvline(data.accuracy, color="black", linestyle="--")
    bars.set_xlim(0, 1)
    bars.set_ylim(len(rows) - 0.5, -0.5)
    _class_ticks(bars, data.classes, x=False, y=True)
    bars.set_xlabel("recall (per-class accuracy)")
    bars.set_ylabel("true class")
    bars.set_title("recall (dashed: overall)", fontsize="medium")


CONFUSION = View(
    "confusion",
    "Confusion matrix of the probe's predictions, per-class accuracy.",
    ConfusionParams,
    ConfusionData,
    compute_confusion,
    draw_confusion,
)


def _most_frequent(frequency: np.ndarray, limit: int) -> np.ndarray:
    """Indices of the `limit` largest counts (ties to the smaller class)."""
    return np.argsort(-frequency, kind="stable")[:limit]
