"""`attributions`: integrated gradients of probe samples, as heat maps or top-feature bars.

Each input element's share of the target logit's rise from an all-zero baseline
(see ``wire.ProbeAttributions``). Images (samples, C, H, W) are summed over
channels; flat inputs whose size is a perfect square (64 digits pixels) are
shown as square images, other flat inputs as bars of their largest shares.
Colours are diverging and centred on 0: red pushes toward the target class,
blue away from it.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import numpy as np
from matplotlib.figure import Figure
from pydantic import Field
from sqlalchemy.orm import Session

from layerwatch import wire
from layerwatch_server import store
from layerwatch_server.errors import InvalidQuery
from layerwatch_server.store.probe_arrays import load_probe
from layerwatch_server.views.base import (
    Part,
    View,
    ViewData,
    ViewParams,
    fit_text,
    show_no_data,
)
from layerwatch_server.views.probing import DIVERGING, NO_PROBES, caption, class_at, pick_step

MAX_DRAWN = 16
MAX_IMAGE_SIDE = 128
NOT_CAPTURED = (
    "the run's probes have no attributions: pass "
    "`probe=layerwatch.Probe(inputs, labels, attributions=8)` to `run.watch(...)` and install "
    "the `attribution` extra (pip install 'layerwatch[attribution]', which brings Captum)"
)
SampleIndex = Annotated[int, Field(ge=0, le=wire.MAX_ATTRIBUTION_SAMPLES)]


class AttributionsParams(ViewParams):
    step: int | None = Field(
        None, ge=0, le=wire.MAX_INT64, description="Default: the latest probe with attributions."
    )
    sample: list[SampleIndex] = Field(
        default_factory=list,
        max_length=wire.MAX_ATTRIBUTION_SAMPLES,
        description=f"Samples (repeat); default: all, the first {MAX_DRAWN} drawn.",
    )
    rank: int = Field(0, ge=0, le=2**31 - 1)
    as_image: bool | None = Field(
        None, description="Flat inputs as a square image; default: when the size is a square."
    )
    max_features: int = Field(64, ge=1, le=4096, description="Bars: the largest by magnitude.")


class AttributedSample(Part):
    sample: int
    target: int = Field(description="The class the values explain.")
    label: int | None
    prediction: int | None
    delta: float | None = Field(description="Convergence delta: sum of shares minus the rise.")
    total: float = Field(description="Sum of all the sample's shares.")
    values: list[list[float]] | list[float] = Field(
        description="Image: (h, w), summed over channels. Bars: the values at `indices`."
    )
    indices: list[int] | None = Field(None, description="Bars: flat input indices, largest first.")


class AttributionsData(ViewData):
    step: int | None
    steps: list[int] = Field(description="Probe steps that have attributions.")
    input_shape: list[int]
    mode: Literal["image", "bars", "none"]
    attributed: int = Field(description="Samples with attributions at `step`.")
    samples: list[AttributedSample]


def _mode(shape: tuple[int, ...], as_image: bool | None) -> Literal["image", "bars"]:
    if len(shape) >= 2:
        return "bars" if as_image is False else "image"
    side = math.isqrt(shape[0])
    square = side * side == shape[0] and side >= 2
    if as_image and not square:
        raise InvalidQuery(f"`as_image`: {shape[0]} input values do not make a square image")
    return "image" if (square if as_image is None else as_image) else "bars"


def compute_attributions(
    session: Session, run_id: str, params: AttributionsParams
) -> AttributionsData:
    probes = store.list_probes(session, run_id, rank=params.rank).data
    explained = [p.step for p in probes if p.attributions]
    step = explained[-1] if explained else None
    if params.step is not None:
        pick_step([p.step for p in probes], params.step, run_id)
        step = pick_step(explained, params.step, run_id, "probe with attributions")
    data = AttributionsData(view="attributions", run_id=run_id, title="Integrated gradients",
                            step=step, steps=explained, input_shape=[], mode="none",
                            attributed=0, samples=[])  # fmt: skip
    if step is None:
        data.notes.append(NOT_CAPTURED if probes else NO_PROBES)
        return data
    probe = load_probe(session, run_id, step, rank=params.rank, layers=[], attributions=True)
    values, targets = probe.attributions, probe.attribution_targets
    assert values is not None  # listed with attributions above
    assert targets is not None
    count, shape = values.shape[0], tuple(values.shape[1:])
    chosen = list(dict.fromkeys(params.sample)) or list(range(count))
    outside = [s for s in chosen if s >= count]
    if outside:
        raise InvalidQuery(f"`sample` {outside[0]}: attributions at step {step} cover the first "
                           f"{count} probe samples (sample 0-{count - 1})")  # fmt: skip
    capped = len(chosen) > MAX_DRAWN
    if capped:
        data.notes.append(f"the first {MAX_DRAWN} of {len(chosen)} samples; pick with `sample`")
        chosen = chosen[:MAX_DRAWN]
    mode = _mode(shape, params.as_image)
    deltas = probe.attribution_deltas
    thinned = False
    for sample in chosen:
        flat = values[sample].reshape(-1).astype(np.float64)
        indices: list[int] | None = None
        if mode == "image":
            if len(shape) == 1:
                side = math.isqrt(shape[0])
                image = flat.reshape(side, side)
            else:  # (..., H, W): summed over channels (and any other leading dimension)
                image = values[sample].reshape(-1, *shape[-2:]).sum(axis=0, dtype=np.float64)
            stride = [max(1, math.ceil(n / MAX_IMAGE_SIDE)) for n in image.shape]
            thinned = thinned or max(stride) > 1
            shown: list[list[float]] | list[float] = image[:: stride[0], :: stride[1]].tolist()
        else:
            order = np.argsort(-np.nan_to_num(np.abs(flat), nan=-1.0), kind="stable")
            order = order[: params.max_features]
            thinned = thinned or flat.size > params.max_features
            indices, shown = order.tolist(), flat[order].tolist()
        data.samples.append(AttributedSample(
            sample=sample, target=int(targets[sample]), label=class_at(probe.labels, sample),
            prediction=class_at(probe.predictions, sample),
            delta=None if deltas is None else float(deltas[sample]),
            total=float(flat.sum()), values=shown, indices=indices,
        ))  # fmt: skip
    if thinned:
        data.notes.append(
            f"the {params.max_features} largest of {flat.size} values by magnitude"
            if mode == "bars" else f"images thinned to at most {MAX_IMAGE_SIDE} pixels a side"
        )  # fmt: skip
    how = "summed over channels" if mode == "image" and len(shape) >= 3 else ""
    title = f"Integrated gradients of probe samples at step {step}" + (f", {how}" if how else "")
    return data.model_copy(update=dict(
        title=title, input_shape=list(shape), mode=mode, attributed=count,
        downsampled=thinned or capped,
    ))  # fmt: skip


def _heading(sample: AttributedSample) -> str:
    described = caption(sample.label, sample.prediction)
    return f"#{sample.sample} target {sample.target}" + (f"\n{described}" if described else "")


def draw_attributions(figure: Figure, data: AttributionsData) -> None:
    """A grid of samples: diverging heat maps on one scale centred on 0, or bar charts."""
    if not data.samples:
        show_no_data(figure, data.title, data.notes)
        return
    columns = math.ceil(math.sqrt(len(data.samples)))
    rows = math.ceil(len(data.samples) / columns)
    grid = figure.subplots(rows, columns, squeeze=False)
    every = np.concatenate([np.ravel(np.asarray(s.values, dtype=np.float64)) for s in data.samples])
    finite = np.abs(every[np.isfinite(every)])
    limit = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    fontsize = "x-small" if rows > 2 else "small"
    image = None
    for index, axes in enumerate(grid.flat):
        if index >= len(data.samples):
            axes.set_axis_off()
            continue
        sample = data.samples[index]
        axes.set_title(_heading(sample), fontsize=fontsize)
        values = np.asarray(sample.values, dtype=np.float64)
        if data.mode == "image":
            image = axes.imshow(values, cmap=DIVERGING, vmin=-limit, vmax=limit,
                                interpolation="nearest")  # fmt: skip
            axes.set_xticks([])
            axes.set_yticks([])
            axes.set_xlabel("width", fontsize=fontsize)
            axes.set_ylabel("height", fontsize=fontsize)
        else:
            colours = DIVERGING(np.clip(0.5 + 0.5 * np.nan_to_num(values) / limit, 0, 1))
            axes.bar(range(len(values)), np.nan_to_num(values), color=colours)
            axes.axhline(0, color="black", linewidth=0.5)
            labels = [str(i) for i in sample.indices or []]
            step = max(1, math.ceil(len(labels) / 12))
            axes.set_xticks(range(0, len(labels), step), labels[::step], fontsize="xx-small")
            axes.tick_params(axis="y", labelsize="xx-small")
            axes.set_xlabel("input feature, largest |share| first", fontsize=fontsize)
            axes.set_ylabel("attribution", fontsize=fontsize)
    if image is not None:
        label = "attribution" + (" (summed over channels)" if len(data.input_shape) >= 3 else "")
        figure.colorbar(image, ax=list(grid.flat), fraction=0.03).set_label(label)
    shown = f"{len(data.samples)} of {data.attributed} samples"
    figure.suptitle(f"{data.title}: {shown}" + (" (downsampled)" if data.downsampled else ""))
    fit_text(figure)


ATTRIBUTIONS = View("attributions", "Integrated-gradient attributions of probe samples.",
                    AttributionsParams, AttributionsData, compute_attributions,
                    draw_attributions)  # fmt: skip
