"""`layer-outputs` and `feature-maps`: what the probed layers make of one probe sample.

`layer-outputs` draws the sample's feature vector at every probed layer in network
order, an activation function's output beside the layer feeding it ("Linear 0
(raw) | ReLU 1 (activated)"), so a reader sees what the non-linearity cut away.
`feature-maps` tiles a convolution's channels for one sample from the
full-resolution maps the client keeps of the first probe samples.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from pydantic import Field
from sqlalchemy.orm import Session

from layerwatch import wire
from layerwatch_server import store
from layerwatch_server.errors import InvalidQuery, ProbeNotFound
from layerwatch_server.store.probe_arrays import load_probe, probe_steps
from layerwatch_server.views.base import (
    Part,
    View,
    ViewData,
    ViewParams,
    fit_text,
    show_no_data,
)
from layerwatch_server.views.probing import (
    DIVERGING,
    NO_PROBES,
    caption,
    class_at,
    finite_range,
    is_activation,
    listing,
    module_types,
    pick_step,
)
from layerwatch_server.wire_schema import Name

MAX_ROWS = 32
MAX_MAP_SIDE = 64


class _ProbeParams(ViewParams):
    step: int | None = Field(
        None, ge=0, le=wire.MAX_INT64, description="Probe step; default: the latest."
    )
    sample: int = Field(0, ge=0, le=wire.MAX_PROBE_SAMPLES, description="Probe sample index.")
    rank: int = Field(0, ge=0, le=2**31 - 1)


# -- layer-outputs --------------------------------------------------------------------


class LayerOutputsParams(_ProbeParams):
    layer: list[Name] = Field(
        default_factory=list, max_length=MAX_ROWS, description="Layers (repeat); default: all."
    )
    max_features: int = Field(256, ge=2, le=4096, description="Per layer; evenly spaced picks.")


class LayerSide(Part):
    layer: str
    type: str | None = Field(description="Module class name from the model tree, if sent.")
    shape: list[int] = Field(description="The layer's stored features per sample.")
    features: int = Field(description="Values per sample before downsampling.")
    indices: list[int] = Field(description="Flat indices of the values drawn.")
    values: list[float]


class OutputRow(Part):
    raw: LayerSide | None = Field(description="A layer that is not an activation function.")
    activated: LayerSide | None = Field(description="An activation fed by `raw`.")


class LayerOutputsData(ViewData):
    step: int | None
    steps: list[int]
    sample: int
    samples: int = Field(description="Samples of the probe.")
    label: int | None
    prediction: int | None
    rows: list[OutputRow]


def _side(name: str, module_type: str | None, features: np.ndarray, limit: int) -> LayerSide:
    values = features.reshape(-1)  # (features,) of one sample, float16 decoded
    picks = np.arange(values.size)
    if values.size > limit:
        picks = np.round(np.linspace(0, values.size - 1, limit)).astype(np.int64)
    return LayerSide(layer=name, type=module_type, shape=list(features.shape),
                     features=values.size, indices=picks.tolist(),
                     values=values[picks].astype(np.float64).tolist())  # fmt: skip


def _pair(sides: list[LayerSide]) -> list[OutputRow]:
    rows: list[OutputRow] = []
    for side in sides:
        feeding = rows[-1] if rows else None
        if not is_activation(side.type):
            rows.append(OutputRow(raw=side, activated=None))
        elif (feeding is not None and feeding.raw is not None and feeding.activated is None
              and feeding.raw.shape == side.shape):  # fmt: skip
            feeding.activated = side
        else:
            rows.append(OutputRow(raw=None, activated=side))
    return rows


def compute_layer_outputs(
    session: Session, run_id: str, params: LayerOutputsParams
) -> LayerOutputsData:
    steps = probe_steps(session, run_id, rank=params.rank)
    step = pick_step(steps, params.step, run_id)
    empty = LayerOutputsData(view="layer-outputs", run_id=run_id, title="Layer outputs",
                             step=step, steps=steps, sample=params.sample, samples=0, label=None,
                             prediction=None, rows=[])  # fmt: skip
    if step is None:
        if params.layer:
            raise ProbeNotFound(f"`layer` `{params.layer[0]}`: run `{run_id}` has no probes")
        empty.notes.append(NO_PROBES)
        return empty
    probe = load_probe(session, run_id, step, rank=params.rank, layers=list(params.layer) or None)
    if params.sample >= probe.samples:
        raise InvalidQuery(
            f"`sample` {params.sample} is out of range: the probe at step {step} has "
            f"{probe.samples} samples (0-{probe.samples - 1})"
        )
    types = module_types(session, run_id, params.rank)
    sides = [_side(name, types.get(name), layer.features[params.sample], params.max_features)
             for name, layer in probe.layers.items()]  # fmt: skip
    rows, notes = _pair(sides), []
    capped = len(rows) > MAX_ROWS
    if capped:
        notes.append(f"the first {MAX_ROWS} of {len(rows)} rows; pick layers with `layer`")
        rows = rows[:MAX_ROWS]
    thinned = [
        s.layer for r in rows for s in (r.raw, r.activated) if s and len(s.indices) < s.features
    ]
    if thinned:
        notes.append(f"{params.max_features} evenly spaced features of {listing(thinned)}")
    if not types:
        notes.append("no model tree: activation layers cannot be recognised")
    bad = sum(int((~np.isfinite(np.asarray(s.values))).sum())
              for r in rows for s in (r.raw, r.activated) if s)  # fmt: skip
    if bad:
        notes.append(f"{bad} non-finite values: NaN hatched, infinities at the scale's ends")
    label, prediction = (
        class_at(probe.labels, params.sample),
        class_at(probe.predictions, params.sample),
    )
    title = f"Layer outputs of probe sample {params.sample} at step {step}"
    if caption(label, prediction):
        title += f" ({caption(label, prediction)})"
    return empty.model_copy(update=dict(
        title=title, samples=probe.samples, label=label, prediction=prediction, rows=rows,
        notes=notes, downsampled=bool(thinned) or capped,
    ))  # fmt: skip


def draw_layer_outputs(figure: Figure, data: LayerOutputsData) -> None:
    """A heat strip per layer, activations beside their input, both on the row's scale.

    Each row is divided by its largest finite magnitude (written in its label),
    so a small layer is as readable as a large one and raw and activated compare
    directly; a row that is shorter than the widest is padded blank.
    """
    if not data.rows:
        show_no_data(figure, data.title, data.notes)
        return
    paired = any(row.raw and row.activated for row in data.rows)
    roles = ["raw", "activated"] if paired else ["output"]
    grid = figure.subplots(1, len(roles), squeeze=False)[0]
    width = max(len(s.values) for row in data.rows for s in (row.raw, row.activated) if s)
    strips = np.full((len(roles), len(data.rows), width), np.nan)
    labels: list[list[str]] = [[""] * len(data.rows) for _ in roles]
    for r, row in enumerate(data.rows):
        sides = [row.raw, row.activated] if paired else [row.raw or row.activated]
        finite = [np.asarray(s.values)[np.isfinite(s.values)] for s in sides if s]
        magnitudes = np.abs(np.concatenate(finite))
        scale = float(magnitudes.max()) if magnitudes.size and magnitudes.max() > 0 else 1.0
        for c, side in enumerate(sides):
            if side is not None:
                strips[c, r, : len(side.values)] = np.clip(np.asarray(side.values) / scale, -1, 1)
                labels[c][r] = f"{side.layer} {side.type or ''} (max |v| {scale:.3g})"
    image = None
    for c, axes in enumerate(grid):
        cells = np.ma.masked_invalid(strips[c])
        image = axes.imshow(cells, aspect="auto", cmap=DIVERGING, vmin=-1, vmax=1,
                            interpolation="nearest")  # fmt: skip
        axes.patch.set_hatch("////")  # no feature here: padding, or NaN
        axes.patch.set_edgecolor("0.8")
        axes.set_title(roles[c])
        axes.set_xlabel("feature (picks when downsampled)" if data.downsampled else "feature")
    assert image is not None
    figure.colorbar(image, ax=list(grid), fraction=0.03).set_label("value / row's max |value|")
    figure.suptitle(data.title + (" (downsampled)" if data.downsampled else ""))
    fit_text(figure)
    # The row labels take at most a fifth of the width each and their share of the height.
    longest = max(len(label) for column in labels for label in column)
    width_pts, height_pts = figure.get_size_inches() * 72
    fontsize = min(9.0, 0.2 * width_pts / (0.6 * longest), 0.5 * height_pts / len(data.rows))
    for axes, column in zip(grid, labels, strict=True):
        axes.set_yticks(range(len(data.rows)), column, fontsize=max(1.0, fontsize))


# -- feature-maps ---------------------------------------------------------------------


class FeatureMapsParams(_ProbeParams):
    layer: Name | None = Field(None, description="Default: the first layer with maps.")
    max_channels: int = Field(64, ge=1, le=1024, description="Channels drawn (the first ones).")
    normalize: Literal["channel", "layer"] = Field(
        "channel", description="Colour scale per channel, or one shared by the layer."
    )


class FeatureMapsData(ViewData):
    step: int | None
    layer: str | None
    layers_with_maps: list[str]
    sample: int
    label: int | None
    prediction: int | None
    normalize: Literal["channel", "layer"]
    channels: int = Field(description="Channels of the stored maps.")
    maps: list[list[list[float]]] = Field(description="(channels, h, w) as drawn, raw values.")
    mins: list[float | None] = Field(description="Finite minimum of each drawn channel.")
    maxs: list[float | None] = Field(description="Finite maximum of each drawn channel.")


def compute_feature_maps(
    session: Session, run_id: str, params: FeatureMapsParams
) -> FeatureMapsData:
    probes = store.list_probes(session, run_id, rank=params.rank).data
    step = pick_step([p.step for p in probes], params.step, run_id)
    data = FeatureMapsData(view="feature-maps", run_id=run_id, title="Feature maps", step=step,
                           layer=None, layers_with_maps=[], sample=params.sample, label=None,
                           prediction=None, normalize=params.normalize, channels=0, maps=[],
                           mins=[], maxs=[])  # fmt: skip
    if step is None:
        if params.layer is not None:
            raise ProbeNotFound(f"`layer` `{params.layer}`: run `{run_id}` has no probes")
        data.notes.append(NO_PROBES)
        return data
    summary = next(p for p in probes if p.step == step)
    with_maps = [layer.name for layer in summary.layers if layer.maps_shape]
    data.layers_with_maps = with_maps
    layer = params.layer or (with_maps[0] if with_maps else None)
    if layer is None:
        data.notes.append(
            f"no layer of the probe at step {step} has feature maps: the client keeps them for "
            "convolution outputs (samples, channels, height, width) only"
        )
        return data
    if layer not in {summary_layer.name for summary_layer in summary.layers}:
        raise ProbeNotFound(f"`layer` `{layer}`: the probe at step {step} has no such layer"
                            f"{store.left_out_because(summary.skipped, layer)}; "
                            f"layers with maps: {listing(with_maps)}")  # fmt: skip
    if layer not in with_maps:
        raise InvalidQuery(f"`layer` `{layer}` has no feature maps at step {step} (only "
                           f"convolution outputs keep them); layers with maps: "
                           f"{listing(with_maps)}")  # fmt: skip
    probe = load_probe(session, run_id, step, rank=params.rank, layers=[layer], maps=True)
    maps = probe.layers[layer].maps
    assert maps is not None  # listed with maps above
    if params.sample >= maps.shape[0]:
        raise InvalidQuery(f"`sample` {params.sample}: only the first {maps.shape[0]} probe "
                           f"samples have feature maps (sample 0-{maps.shape[0] - 1})")  # fmt: skip
    channels = maps.shape[1]
    shown = maps[params.sample, : params.max_channels]  # (c, h, w)
    stride = [max(1, math.ceil(side / MAX_MAP_SIDE)) for side in shown.shape[1:]]
    shown = shown[:, :: stride[0], :: stride[1]]
    if channels > params.max_channels:
        data.notes.append(f"the first {params.max_channels} of {channels} channels")
    if max(stride) > 1:
        data.notes.append(f"every {stride[0]}th row and {stride[1]}th column of each map")
    bad = int((~np.isfinite(shown)).sum())
    if bad:
        data.notes.append(f"{bad} non-finite values (float16 overflow) left blank")
    ranges = [finite_range(channel) for channel in shown]
    data.label = class_at(probe.labels, params.sample)
    data.prediction = class_at(probe.predictions, params.sample)
    described = caption(data.label, data.prediction)
    title = f"Feature maps of layer {layer}, probe sample {params.sample} at step {step}"
    return data.model_copy(update=dict(
        title=title + (f" ({described})" if described else ""), layer=layer, channels=channels,
        maps=shown.astype(np.float64).tolist(), mins=[lo for lo, _ in ranges],
        maxs=[hi for _, hi in ranges],
        downsampled=channels > params.max_channels or max(stride) > 1,
    ))  # fmt: skip


def draw_feature_maps(figure: Figure, data: FeatureMapsData) -> None:
    """The channels tiled into one nearly square mosaic, one colour bar."""
    if not data.maps:
        show_no_data(figure, data.title, data.notes)
        return
    axes = figure.add_subplot()
    axes.set_title(data.title + (" (downsampled)" if data.downsampled else ""))
    maps = np.asarray(data.maps, dtype=np.float64)  # (c, h, w)
    count, height, width = maps.shape
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    mosaic = np.full((rows * (height + 1) - 1, columns * (width + 1) - 1), np.nan)
    for channel, (lo, hi) in enumerate(zip(data.mins, data.maxs, strict=True)):
        tile = maps[channel]
        if data.normalize == "channel":
            spread = (hi - lo) if lo is not None and hi is not None else 0.0
            tile = (tile - (lo or 0.0)) / spread if spread > 0 else np.where(
                np.isfinite(tile), 0.5, np.nan)  # fmt: skip
        top, left = divmod(channel, columns)
        top, left = top * (height + 1), left * (width + 1)
        mosaic[top : top + height, left : left + width] = np.where(np.isfinite(tile), tile, np.nan)
        axes.text(left - 0.5, top - 0.5, str(channel), fontsize="xx-small", va="top",
                  ha="left", bbox={"facecolor": "white", "alpha": 0.6, "pad": 0.5,
                                   "linewidth": 0})  # fmt: skip
    finite_lo = [v for v in data.mins if v is not None]
    finite_hi = [v for v in data.maxs if v is not None]
    if data.normalize == "channel":
        vmin, vmax, label = 0.0, 1.0, "within channel: 0 = its min, 1 = its max"
    else:
        vmin = min(finite_lo) if finite_lo else 0.0
        vmax = max(finite_hi) if finite_hi else 1.0
        label = "activation (shared scale)"
    image = axes.imshow(
        np.ma.masked_invalid(mosaic),
        cmap=colormaps["viridis"].with_extremes(bad="white"),
        vmin=vmin,
        vmax=vmax if vmax > vmin else vmin + 1,
        interpolation="nearest",
    )
    axes.set_xticks([])
    axes.set_yticks([])
    axes.set_xlabel(f"{count} channels, row by row; each {height} x {width} (h x w)")
    axes.set_ylabel(f"{rows} rows of {columns}")
    figure.colorbar(image, ax=axes, fraction=0.04).set_label(label)
    fit_text(figure)


LAYER_OUTPUTS = View("layer-outputs",
                     "One probe sample through every probed layer, raw beside activated.",
                     LayerOutputsParams, LayerOutputsData, compute_layer_outputs,
                     draw_layer_outputs)  # fmt: skip
FEATURE_MAPS = View("feature-maps", "A convolution's channels for one probe sample.",
                    FeatureMapsParams, FeatureMapsData, compute_feature_maps,
                    draw_feature_maps)  # fmt: skip
