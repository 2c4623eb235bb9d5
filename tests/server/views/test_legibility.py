"""Views of a 120-layer run stay readable: tick labels thinned so that none overlap, legends
beside the axes naming at most 12 entries, heatmaps instead of a hundred lines; and the
`bias=` filter knows an LSTM's biases."""

from __future__ import annotations

import math
from typing import Any

import httpx
import numpy as np
import pytest
from batches import (
    body,
    histogram,
    make_batch,
    new_id,
    packed_floats,
    stats_block,
    weight_changes_block,
)
from images import assert_drawn, png, view
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import RendererAgg
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.text import Text

from layerwatch_server.views import VIEWS, ImageParams
from layerwatch_server.views.base import draw_figure
from layerwatch_server.views.legibility import MAX_LEGEND
from layerwatch_server.views.tensors import is_bias

LAYERS = 120
STEPS = range(0, 100, 10)
LSTM = ["rnn.weight_ih_l0", "rnn.bias_ih_l0", "rnn.bias_hh_l0", "rnn.bias_hh_l0_reverse"]
SIZES = [ImageParams(), ImageParams(width=400, height=300), ImageParams(width=1600, height=1000)]


def _weights() -> list[str]:
    return [f"blocks.{i}.attn.proj.weight" for i in range(LAYERS)]


@pytest.fixture(scope="module")
def large_run(api: httpx.Client) -> str:
    """120 blocks with a weight, a bias and an activation each (8 units, the even blocks' half
    dead), then an LSTM's weight and three biases; one batch per kind of record."""
    run_id = new_id("r")
    api.post("/runs", json={"id": run_id, "project": new_id("p")}).raise_for_status()
    rng = np.random.default_rng(0)
    params = [name for w in _weights() for name in (w, w.replace("weight", "bias"))] + LSTM
    grads = [stats_block(name, STEPS, kind="grad", abs_mean=(10 ** rng.uniform(-6, -1, 10)))
             for name in params]  # fmt: skip
    changes = [weight_changes_block(name, STEPS) for name in params]
    acts = [f"blocks.{i}.act" for i in range(LAYERS)]
    rows = {0: packed_floats([0.0] * 4 + [1.0] * 4), 1: packed_floats([1.0] * 8)}
    means = [{"name": name, "kind": "activation", "steps": list(STEPS),
              "values": [rows[i % 2] for _ in STEPS]} for i, name in enumerate(acts)]  # fmt: skip
    hists = [histogram(acts[0], s, [1 + s, 5, 3, 1], lo=-1.0 - s / 100, hi=1.0) for s in STEPS]
    for batch in (make_batch(stats=grads), make_batch(weight_changes=changes),
                  make_batch(unit_means=means, histograms=hists),
                  make_batch(stats=[stats_block(name, STEPS) for name in acts])):  # fmt: skip
        api.post(f"/runs/{run_id}/batches", content=body(batch)).raise_for_status()
    return run_id


def _figure(api: httpx.Client, run_id: str, name: str, image: ImageParams,
            **params: Any) -> Figure:  # fmt: skip
    """The figure the PNG route would draw, drawn here from the view's JSON twin."""
    data = VIEWS[name].data.model_validate(view(api, run_id, name, **params))
    figure = draw_figure(VIEWS[name], data, image)
    figure.canvas.draw()
    return figure


def _labels(axis_labels: list[Text]) -> list[Text]:
    return [label for label in axis_labels if label.get_visible() and label.get_text()]


def _assert_apart(figure: Figure, labels: list[Text], *, along_x: bool) -> None:
    """Neighbouring labels do not overlap: side by side (unrotated), or, rotated by a, their
    text lines (one text height thick) at least that far apart across."""
    renderer = figure.canvas.get_renderer()
    assert isinstance(renderer, RendererAgg)
    boxes = [label.get_window_extent(renderer) for label in labels]
    for i in range(len(labels) - 1):
        (a, box_a), (b, box_b) = (labels[i], boxes[i]), (labels[i + 1], boxes[i + 1])
        angle = math.radians(a.get_rotation())
        if not along_x or angle == 0:
            assert not box_a.overlaps(box_b), (a.get_text(), b.get_text())
            continue
        _, height, _ = renderer.get_text_width_height_descent(
            a.get_text(), a.get_fontproperties(), ismath=False
        )
        apart = abs(a.get_transform().transform(a.get_position())[0]
                    - b.get_transform().transform(b.get_position())[0])  # fmt: skip
        assert apart * math.sin(angle) >= height, (a.get_text(), b.get_text())


def _assert_readable_ticks(figure: Figure, axes: Axes, *, at_most: int) -> list[Text]:
    x, y = _labels(axes.get_xticklabels()), _labels(axes.get_yticklabels())
    _assert_apart(figure, x, along_x=True)
    _assert_apart(figure, y, along_x=False)
    assert len(x) <= at_most
    assert len(y) <= at_most
    return x + y


def test_is_bias_knows_lstm_biases() -> None:
    assert all(is_bias(n) for n in ["fc.bias", "bias", "rnn.bias_ih_l0", "l.bias_hh_l0_reverse"])
    assert not any(is_bias(n) for n in ["fc.weight", "rnn.weight_ih_l0", "unbiased.weight",
                                        "biased_layer.weight"])  # fmt: skip


def test_bias_filter_leaves_out_lstm_biases(api: httpx.Client, large_run: str) -> None:
    flow = view(api, large_run, "gradient-flow", part="bars")
    assert flow["layers"] == [*_weights(), "rnn.weight_ih_l0"]
    assert f"{LAYERS + 3} bias gradients left out" in " ".join(flow["notes"])
    every = view(api, large_run, "gradient-flow", part="bars", bias=True)
    assert every["layers"][-4:] == LSTM
    changes = view(api, large_run, "weight-change", style="heatmap")
    assert changes["layers"] == [*_weights(), "rnn.weight_ih_l0"]
    with_bias = view(api, large_run, "weight-change", style="heatmap", bias=True)
    assert with_bias["layers"][-4:] == LSTM


def test_many_layers_are_drawn_as_heatmaps_by_default(api: httpx.Client, large_run: str) -> None:
    dead = view(api, large_run, "dead-units")
    assert (dead["style"], len(dead["layers"]), dead["notes"]) == ("heatmap", LAYERS, [])
    np.testing.assert_array_equal(np.array(dead["fractions"])[:, -1], [0.5, 0.0] * (LAYERS // 2))
    lines = view(api, large_run, "dead-units", style="lines")
    assert (lines["style"], len(lines["layers"])) == ("lines", 32)
    assert f"the first 32 of {LAYERS} layers" in lines["notes"]
    changes = view(api, large_run, "weight-change")
    assert (changes["style"], len(changes["layers"])) == ("heatmap", LAYERS + 1)
    few = view(api, large_run, "weight-change", tensor=_weights()[:3])
    assert (few["style"], few["layers"]) == ("lines", _weights()[:3])


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("gradient-flow", {}),
        ("gradient-flow", {"bias": True, "part": "bars"}),
        ("weight-change", {}),
        ("weight-change", {"style": "lines"}),
        ("dead-units", {}),
        ("dead-units", {"style": "lines", "part": "fractions"}),
        ("series", {}),
        ("distributions", {}),
        ("histogram", {"kind": "activation", "step": list(STEPS)}),
    ],
    ids=lambda value: value if isinstance(value, str) else "-".join(map(str, value.values())),
)
@pytest.mark.parametrize("image", SIZES, ids=lambda image: f"{image.width}x{image.height}")
def test_views_of_120_layers_render(
    api: httpx.Client, large_run: str, name: str, params: dict[str, Any], image: ImageParams
) -> None:
    answer = png(api, large_run, name, **params, **image.model_dump())
    assert_drawn(answer.content, image.width, image.height)
    assert len(answer.content) < 400_000  # Agg's PNG of a busy 1600 x 1000 figure is ~150 kB


@pytest.mark.parametrize("image", SIZES, ids=lambda image: f"{image.width}x{image.height}")
def test_layer_tick_labels_are_thinned_never_overlapping(
    api: httpx.Client, large_run: str, image: ImageParams
) -> None:
    flow = _figure(api, large_run, "gradient-flow", image, bias=True)
    bars, heat = flow.axes[0], flow.axes[1]
    named = _assert_readable_ticks(flow, bars, at_most=60)
    assert 3 <= len(named) < LAYERS  # thinned, not dropped
    assert named[0].get_text() == "blocks.0.attn.proj.weight"  # the first layer is named
    assert len(_assert_readable_ticks(flow, heat, at_most=60)) > 3
    for name, params in (("weight-change", {}), ("dead-units", {"part": "fractions"})):
        figure = _figure(api, large_run, name, image, **params)
        for axes in figure.axes:
            if axes.get_label() != "<colorbar>":
                _assert_readable_ticks(figure, axes, at_most=60)


def test_a_small_model_keeps_every_label(api: httpx.Client, large_run: str) -> None:
    few = _weights()[:5]
    drawn = _figure(api, large_run, "weight-change", ImageParams(), tensor=few, style="heatmap")
    names = [t.get_text() for t in _labels(drawn.axes[0].get_yticklabels())]
    assert names == few


def _legends(figure: Figure) -> list[Legend]:
    """The figure's legends, its own (beside panels that share it) first."""
    return [*figure.legends, *(a.get_legend() for a in figure.axes if a.get_legend())]


def test_long_legends_sit_beside_the_axes_and_name_at_most_12(
    api: httpx.Client, large_run: str
) -> None:
    for name, params in (("series", {}), ("weight-change", {"style": "lines"}),
                         ("dead-units", {"style": "lines", "part": "fractions"})):  # fmt: skip
        figure = _figure(api, large_run, name, ImageParams(), **params)
        legend = _legends(figure)[0]  # weight-change: the layers, then the reference
        entries = [t.get_text() for t in legend.get_texts()]
        assert len(entries) == MAX_LEGEND, name
        assert legend.get_title().get_text() == f"first {MAX_LEGEND} of 32", name
        box = legend.get_window_extent()
        for axes in figure.axes:  # to the right of the plots, covering none of them
            assert not box.overlaps(axes.get_window_extent()), name
        assert box.x1 <= figure.bbox.x1 + 1, name  # and on the image
