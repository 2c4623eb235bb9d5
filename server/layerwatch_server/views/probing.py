"""What the probe views share: choosing the probe and the layer, projecting, colouring.

Parameters name a probe step and a layer or leave them out: a default renders
for any run (the latest probe, a layer chosen for the view), a named one must
exist (`ProbeNotFound` naming it). Points are coloured by class: the labels when the
probe has them, else the predictions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import matplotlib
import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from pydantic import Field
from sqlalchemy.orm import Session

from layerwatch import wire
from layerwatch_server import store
from layerwatch_server.errors import ProbeNotFound
from layerwatch_server.schemas import ProbeLayerSummary, ProbeSummary
from layerwatch_server.store.probe_arrays import ProbeArrays
from layerwatch_server.views.base import ViewParams

MAX_LEGEND_CLASSES = 20
FIT_VALUES = 4_000_000
"""Most feature values (points x features) a PCA is fitted on; more are thinned evenly."""
GRID_VALUES = 8_000_000
"""Most feature values a grid holds at once; fewer points per panel beyond that."""
SKLEARN_MISSING = "scikit-learn is not installed on the server: pip install 'layerwatch[server]'"
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

    A named step or layer that does not exist is a `ProbeNotFound` naming it; with
    defaults only, a run without probes gives a choice without a probe.
    """
    probes = store.list_probes(session, run_id, rank=rank).data
    if step is not None:
        chosen = next((probe for probe in probes if probe.step == step), None)
        if chosen is None:
            raise ProbeNotFound(f"`step`: run `{run_id}` has no probe at step {step} (rank {rank})")
    elif layer is not None and default_layer is not None:
        having = [p for p in probes if any(item.name == layer for item in p.layers)]
        if not having:
            raise ProbeNotFound(
                f"`layer`: run `{run_id}` has no probed layer `{layer}` (rank {rank})"
                + (store.left_out_because(probes[-1].skipped, layer) if probes else "")
            )
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
            raise ProbeNotFound(f"`layer`: the probe at step {chosen.step} has no layer `{layer}`")
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


ACTIVATIONS = frozenset(
    name.lower()
    for name in (
        "ReLU", "ReLU6", "LeakyReLU", "PReLU", "RReLU", "GELU", "SiLU", "Swish", "Mish", "ELU",
        "CELU", "SELU", "GLU", "Sigmoid", "LogSigmoid", "Hardsigmoid", "Hardswish", "Hardtanh",
        "Tanh", "Tanhshrink", "Softmax", "Softmax2d", "LogSoftmax", "Softmin", "Softplus",
        "Softsign", "Softshrink", "Hardshrink", "Threshold", "QuickGELU", "NewGELUActivation",
    )
)  # fmt: skip
"""Module class names (lower case) whose output is an activation function's."""

NO_PROBES = (
    "the run has no probes: pass `probe=(inputs, labels)` to `run.watch(...)` and call "
    "`run.probe()` (or pass `probe=layerwatch.Probe(inputs, labels, every=N)`)"
)
DIVERGING = colormaps["RdBu_r"].with_extremes(bad=(0.0, 0.0, 0.0, 0.0))
"""Red above 0, blue below; NaN transparent (over a hatched background where it matters)."""


def is_activation(module_type: str | None) -> bool:
    return module_type is not None and module_type.lower() in ACTIVATIONS


def listing(values: Sequence[object], limit: int = 12) -> str:
    """`a`, `b`, ... for messages: the first `limit` values, and how many more."""
    if not values:
        return "none"
    shown = ", ".join(f"`{value}`" for value in values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")


def pick_step(steps: list[int], step: int | None, run_id: str, what: str = "probe") -> int | None:
    """The asked-for step if `steps` has it (else `ProbeNotFound`), by default the latest."""
    if step is None:
        return steps[-1] if steps else None
    if step not in steps:
        raise ProbeNotFound(
            f"`step` {step}: run `{run_id}` has no {what} at step {step}; steps: {listing(steps)}"
        )
    return step


def class_at(classes: np.ndarray | None, sample: int) -> int | None:
    return None if classes is None or sample >= len(classes) else int(classes[sample])


def caption(label: int | None, prediction: int | None) -> str:
    """`label 3, predicted 5` with the parts the probe has."""
    parts = [f"label {label}"] if label is not None else []
    if prediction is not None:
        parts.append(f"predicted {prediction}")
    return ", ".join(parts)


def module_types(session: Session, run_id: str, rank: int) -> dict[str, str]:
    """Module path -> class name from the run's model trees (first tree wins)."""
    types: dict[str, str] = {}
    for tree in store.get_model_trees(session, run_id, rank=rank).data:
        for module in tree.modules:
            types.setdefault(module.path, module.type)
    return types


def finite_range(values: np.ndarray) -> tuple[float | None, float | None]:
    finite = values[np.isfinite(values)]
    return (float(finite.min()), float(finite.max())) if finite.size else (None, None)
