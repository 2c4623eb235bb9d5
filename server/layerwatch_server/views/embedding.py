"""`embedding`: a probed layer's samples laid out in 2-D by t-SNE (or PCA), coloured by class.

t-SNE keeps each sample near its nearest neighbours in the layer's feature
space, so classes the layer separates form islands. Features are first
reduced to at most 50 dimensions with PCA (the usual practice: faster, less
noise). t-SNE takes seconds, so each (run, rank, layer, step, method,
perplexity) is computed once, with a fixed random state, and kept in the
``embeddings`` table (``store/embeddings.py``); later requests read it.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from matplotlib.figure import Figure
from pydantic import Field
from sqlalchemy.orm import Session

from layerwatch_server.store.embeddings import EmbeddingKey, get_embedding, save_embedding
from layerwatch_server.store.probe_arrays import load_probe
from layerwatch_server.views.base import StrPair, View, ViewData, no_data
from layerwatch_server.views.probing import (
    SKLEARN_MISSING,
    ColourBy,
    ProbeParams,
    choose_probe,
    class_legend,
    colour_values,
    feature_rows,
    narrowest_hidden_layer,
    plot_classes,
    take,
)
from layerwatch_server.wire_schema import Name

MAX_PCA_DIMS = 50
MIN_TSNE_SAMPLES = 5
RANDOM_STATE = 0


class EmbeddingParams(ProbeParams):
    layer: Name | None = Field(
        None, description="Probed layer; default: the narrowest layer before the output."
    )
    method: Literal["tsne", "pca"] = Field("tsne", description="t-SNE, or a plain 2-D PCA.")
    perplexity: float = Field(
        30.0,
        ge=1,
        le=500,
        description="t-SNE's effective number of neighbours; at most (samples - 1) / 3.",
    )


class EmbeddingData(ViewData):
    layer: str | None = None
    step: int | None = None
    method: Literal["tsne", "pca"] = "tsne"
    perplexity: float | None = Field(None, description="The one t-SNE ran with.")
    input_dims: int | None = Field(None, description="Dimensions t-SNE or PCA started from.")
    axis_labels: StrPair = ("", "")
    color_by: ColourBy = "none"
    classes: list[int] = Field(default_factory=list)
    samples: list[int] = Field(default_factory=list, description="Probe sample of each point.")
    x: list[float] = Field(default_factory=list)
    y: list[float] = Field(default_factory=list)
    labels: list[int] | None = None
    predictions: list[int] | None = None


def _embed(rows: np.ndarray, method: str, perplexity: float) -> np.ndarray:
    """(n, F) finite, not all equal -> (n, 2) float32."""
    from sklearn.decomposition import PCA

    if method == "pca":
        if rows.shape[1] == 1:
            return np.column_stack([rows[:, 0], np.zeros(len(rows))]).astype("<f4")
        projected: np.ndarray = PCA(n_components=2, svd_solver="full").fit_transform(rows)
        return projected.astype("<f4")
    from sklearn.manifold import TSNE

    if rows.shape[1] > MAX_PCA_DIMS:
        dims = min(MAX_PCA_DIMS, len(rows))
        rows = PCA(n_components=dims, random_state=RANDOM_STATE).fit_transform(rows)
    tsne = TSNE(
        n_components=2,
        perplexity=perplexity,
        init="pca" if rows.shape[1] >= 2 else "random",
        learning_rate="auto",
        random_state=RANDOM_STATE,
    )
    embedded: np.ndarray = tsne.fit_transform(rows)
    return embedded.astype("<f4")


def compute_embedding(session: Session, run_id: str, params: EmbeddingParams) -> EmbeddingData:
    choice = choose_probe(
        session,
        run_id,
        rank=params.rank,
        step=params.step,
        layer=params.layer,
        default_layer=narrowest_hidden_layer,
    )
    if choice.probe is None or choice.layer is None:
        return EmbeddingData(
            view="embedding",
            run_id=run_id,
            title="embedding",
            method=params.method,
            notes=[choice.note],
        )
    layer, step, method = choice.layer, choice.probe.step, params.method
    probe = load_probe(session, run_id, step, rank=params.rank, layers=[layer])
    rows = feature_rows(probe.layers[layer].features)
    finite = np.isfinite(rows).all(axis=1)
    kept, rows = np.flatnonzero(finite), rows[finite]
    notes = [f"{len(finite) - len(kept)} samples with non-finite features left out"]
    notes = notes if len(kept) < len(finite) else []
    name = "t-SNE" if method == "tsne" else "PCA"
    data = EmbeddingData(
        view="embedding",
        run_id=run_id,
        title=f"layer {layer} at step {step}: {name}",
        method=method,
        layer=layer,
        step=step,
        notes=notes,
    )
    if len(rows) < (MIN_TSNE_SAMPLES if method == "tsne" else 2):
        data.notes.append(f"{len(rows)} samples with finite features: too few for {name}")
        return data
    perplexity = params.perplexity
    if method == "tsne":
        if perplexity > (len(rows) - 1) / 3:
            perplexity = (len(rows) - 1) / 3
            data.notes.append(f"perplexity lowered to {perplexity:.4g} for {len(rows)} samples")
        data.title += f" (perplexity {perplexity:.3g})"
        data.perplexity = perplexity
    key = EmbeddingKey(run_id, params.rank, layer, step, method, data.perplexity or 0.0)
    constant = not np.ptp(rows, axis=0).any()
    coordinates = get_embedding(session, key)
    if coordinates is None or len(coordinates) != len(rows):
        if constant:
            coordinates = np.zeros((len(rows), 2), dtype="<f4")
        else:
            try:
                coordinates = _embed(rows, method, perplexity)
            except ImportError:
                data.notes.append(SKLEARN_MISSING)
                return data
        save_embedding(session, key, coordinates)
    if constant:
        data.notes.append("the samples' features are all equal: every point is at 0")
    by, values = colour_values(probe)
    data.input_dims = (
        rows.shape[1] if method == "pca" else min(rows.shape[1], MAX_PCA_DIMS, len(rows))
    )
    data.axis_labels = (f"{name} 1", f"{name} 2")
    data.color_by = by
    data.classes = [] if values is None else sorted({int(v) for v in values[kept]})
    data.samples = kept.tolist()
    data.x, data.y = coordinates[:, 0].tolist(), coordinates[:, 1].tolist()
    data.labels, data.predictions = take(probe.labels, kept), take(probe.predictions, kept)
    return data


def draw_embedding(figure: Figure, data: EmbeddingData) -> None:
    """Points coloured by class; t-SNE's axes have no units, only neighbourhoods matter."""
    axes = figure.add_subplot()
    axes.set_title(data.title)
    if not data.x:
        no_data(axes, "; ".join(data.notes[-1:]) or "no data")
        return
    values = data.labels if data.color_by == "label" else data.predictions
    mappable = plot_classes(
        axes,
        np.asarray(data.x),
        np.asarray(data.y),
        values if data.color_by != "none" else None,
        data.classes,
    )
    axes.set_xlabel(data.axis_labels[0])
    axes.set_ylabel(data.axis_labels[1])
    axes.grid(True, alpha=0.3)
    class_legend(figure, [axes], data.classes, data.color_by, mappable)


EMBEDDING = View(
    "embedding",
    "A probed layer's samples in 2-D by t-SNE or PCA, by class.",
    EmbeddingParams,
    EmbeddingData,
    compute_embedding,
    draw_embedding,
)
