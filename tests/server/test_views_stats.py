"""The statistics views: distributions, histogram, gradient-flow, weight-change, dead-units.

Each view's JSON twin is checked against numbers computed here, with NumPy,
from the store's own JSON endpoints (``/histograms``, ``/series``,
``/weight-changes``, ``/unit-means``); images for size and ink; bad
parameters for a 4xx naming them; and every gallery run for no 5xx.
"""

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
from gallery import GalleryRuns
from images import DOWNSAMPLED, assert_drawn, png_size, view

VIEWS = ("distributions", "histogram", "gradient-flow", "weight-change", "dead-units")
PERCENTILES = [0.0, 6.68, 15.87, 30.85, 50.0, 69.15, 84.13, 93.32, 100.0]


def floats(values: Any) -> np.ndarray:
    """JSON numbers (with "NaN"/"Infinity" strings) as float64."""
    return np.array(values, dtype=np.float64)


def assert_error(response: httpx.Response, status: int, *names: str) -> None:
    assert response.status_code == status, response.text
    for name in names:
        assert name in response.text


# -- a crafted run: sampled, empty and constant histograms, zero and NaN values ----------


@pytest.fixture(scope="module")
def crafted(api: httpx.Client) -> str:
    run_id = new_id("r")
    api.post("/runs", json={"id": run_id, "project": new_id("p")}).raise_for_status()
    hists = [histogram("h", s, [1 + s, 2, 3, s], lo=-1.0 - s, hi=1.0 + s, sample_size=500)
             for s in range(10) if s not in (5, 7)]  # fmt: skip
    hists.append(histogram("h", 5, [0, 0, 0, 0], sample_size=500))  # empty: skipped
    hists.append(histogram("h", 7, [4, 0, 0, 0], lo=0.25, hi=0.25))  # constant tensor
    zero_grad = [0.0, 0.5, 0.0, 2.0]
    rows = [packed_floats([0.0, -1.0, 0.0, 2.0]), packed_floats([0.0, 0.5, 1e-3, 0.0])]
    changes = weight_changes_block("w.weight", range(4))
    changes["since_init"][2] = math.inf
    batch = make_batch(
        histograms=hists,
        stats=[stats_block("a.weight", range(4), kind="grad", abs_mean=zero_grad),
               stats_block("b.weight", range(4), kind="grad")],
        weight_changes=[changes],
        unit_means=[{"name": "u", "kind": "activation", "steps": [0, 1], "values": rows}],
    )  # fmt: skip
    api.post(f"/runs/{run_id}/batches", content=body(batch)).raise_for_status()
    return run_id


# -- every view, every gallery run -------------------------------------------------------


@pytest.mark.parametrize("name", VIEWS)
def test_defaults_render_on_every_gallery_run(
    api: httpx.Client, gallery_runs: GalleryRuns, name: str
) -> None:
    for run, run_id in gallery_runs.all.items():
        png = api.get(f"/runs/{run_id}/plots/{name}.png")
        assert png.status_code == 200, (run, png.text)
        assert png.headers["content-type"] == "image/png"
        if run in ("mlp", "cnn"):
            assert_drawn(png.content)
        else:
            assert png_size(png.content) == (900, 500)
        data = view(api, run_id, name)
        if run == "empty":
            assert data["notes"], name  # "no data" says why
    small = api.get(f"/runs/{gallery_runs.mlp}/plots/{name}.png",
                    params={"width": 200, "height": 150, "dpi": 50})  # fmt: skip
    assert small.status_code == 200
    assert png_size(small.content) == (200, 150)


# -- distributions ---------------------------------------------------------------------


def _cdf_at(value: float, edges: np.ndarray, counts: np.ndarray) -> float:
    cumulative = np.concatenate(([0.0], np.cumsum(counts))) / counts.sum()
    return float(np.interp(value, edges, cumulative))


def _rebinned(edges: np.ndarray, counts: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Each stored bin's mass spread evenly over it, summed into the grid's bins."""
    out = np.zeros(len(grid) - 1)
    for lo, hi, count in zip(edges[:-1], edges[1:], counts, strict=True):
        for k in range(len(grid) - 1):
            overlap = max(0.0, min(hi, grid[k + 1]) - max(lo, grid[k]))
            out[k] += count * overlap / (hi - lo)
    return out / counts.sum()


def test_distributions_bands_and_heatmap_follow_the_stored_histograms(
    api: httpx.Client, gallery_runs: GalleryRuns
) -> None:
    run_id = gallery_runs.mlp
    data = view(api, run_id, "distributions", bins=16)
    assert (data["tensor"], data["kind"], data["downsampled"]) == ("0", "activation", False)
    stored = api.get(f"/runs/{run_id}/histograms", params={"tensor": "0"}).json()["data"]
    assert data["steps"] == [h["step"] for h in stored] == list(range(0, 100, 5))
    assert data["percentiles"] == PERCENTILES
    bands = floats(data["bands"])  # (9, steps)
    grid = floats(data["value_edges"])
    assert len(grid) == 17
    for j, h in enumerate(stored):
        edges, counts = floats(h["edges"]), floats(h["counts"])
        nonempty = np.flatnonzero(counts)
        assert bands[0, j] == pytest.approx(edges[nonempty[0]])  # min
        assert bands[-1, j] == pytest.approx(edges[nonempty[-1] + 1])  # max
        assert np.all(np.diff(bands[:, j]) >= 0)
        for p, value in zip(PERCENTILES[1:-1], bands[1:-1, j], strict=True):
            assert _cdf_at(value, edges, counts) == pytest.approx(p / 100, abs=1e-9)
        row = floats(data["heatmap"][j])
        np.testing.assert_allclose(row, _rebinned(edges, counts, grid), atol=1e-12)
        assert row.sum() == pytest.approx(1.0)
    lows = [floats(h["edges"])[np.flatnonzero(h["counts"])[0]] for h in stored]
    assert grid[0] == pytest.approx(min(lows))  # the grid spans every shown step


def test_distributions_thin_steps_evenly(api: httpx.Client, gallery_runs: GalleryRuns) -> None:
    url = f"/runs/{gallery_runs.mlp}/plots/distributions"
    thin = api.get(f"{url}.json", params={"max_steps": 6, "start": 10, "end": 90})
    assert thin.headers[DOWNSAMPLED] == "true"
    data = thin.json()
    assert (data["downsampled"], data["total_steps"]) == (True, 17)
    steps = data["steps"]
    assert len(steps) == 6
    assert (steps[0], steps[-1]) == (10, 90)
    gaps = np.diff(steps)
    assert gaps.max() - gaps.min() <= 5  # even, to within one capture
    png = api.get(f"{url}.png", params={"max_steps": 6, "mode": "heatmap", "log": True})
    assert png.headers[DOWNSAMPLED] == "true"
    assert_drawn(png.content)
    full = api.get(f"{url}.png", params={"mode": "bands"})
    assert full.headers[DOWNSAMPLED] == "false"
    assert_drawn(full.content)


def test_distributions_skip_empty_histograms_and_say_when_sampled(
    api: httpx.Client, crafted: str
) -> None:
    data = view(api, crafted, "distributions")
    assert data["tensor"] == "h"
    assert 5 not in data["steps"]
    assert data["steps"] == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    assert data["sample_sizes"][0] == 500
    assert data["sample_sizes"][data["steps"].index(7)] is None
    assert any("skipped" in note and "5" in note for note in data["notes"])
    assert any("sample of 500" in note for note in data["notes"])
    constant = data["steps"].index(7)
    assert floats(data["bands"])[:, constant] == pytest.approx([0.25] * 9)
    assert sum(data["heatmap"][constant]) == pytest.approx(1.0)
    assert_drawn(api.get(f"/runs/{crafted}/plots/distributions.png").content)


def test_distributions_refuse_nonsense(api: httpx.Client, gallery_runs: GalleryRuns) -> None:
    url = f"/runs/{gallery_runs.mlp}/plots/distributions"
    assert_error(api.get(f"{url}.png", params={"tensor": "nope"}), 404, "nope")
    assert_error(api.get(f"{url}.json", params={"mode": "bands", "bins": 32}), 422, "bins")
    assert_error(api.get(f"{url}.json", params={"start": 50, "end": 10}), 422, "start")
    assert_error(api.get(f"{url}.json", params={"bins": 4}), 422, "bins")
    assert_error(api.get(f"{url}.json", params={"max_steps": 1}), 422, "max_steps")
    assert_error(api.get(f"{url}.json", params={"mode": "violin"}), 422, "mode")
    assert_error(api.get(f"{url}.json", params={"kind": "weight", "tensor": "0"}), 404, "`0`")


# -- histogram -------------------------------------------------------------------------


def test_histogram_before_and_after_training(api: httpx.Client, gallery_runs: GalleryRuns) -> None:
    run_id = gallery_runs.mlp
    data = view(api, run_id, "histogram")
    assert (data["tensor"], data["kind"], data["density"]) == ("0.weight", "weight", True)
    assert [c["step"] for c in data["curves"]] == [0, 95]
    assert [c["label"] for c in data["curves"]] == ["step 0", "step 95"]
    for curve in data["curves"]:
        query = {"tensor": "0.weight", "kind": "weight", "step": curve["step"]}
        [stored] = api.get(f"/runs/{run_id}/histograms", params=query).json()["data"]
        edges, counts = floats(stored["edges"]), floats(stored["counts"])
        assert curve["edges"] == pytest.approx(list(edges))
        np.testing.assert_allclose(curve["values"], counts / counts.sum() / np.diff(edges))
        assert float(np.sum(floats(curve["values"]) * np.diff(edges))) == pytest.approx(1.0)
        assert curve["count"] == counts.sum() == 32 * 64
    counts = view(api, run_id, "histogram", density=False, step=50)
    [curve] = counts["curves"]
    assert curve["step"] == 50
    assert sum(curve["values"]) == 32 * 64


def test_histogram_across_runs(api: httpx.Client, gallery_runs: GalleryRuns) -> None:
    mlp, cnn = gallery_runs.mlp, gallery_runs.cnn
    data = view(api, mlp, "histogram", compare=cnn)
    assert [(c["run_id"], c["step"]) for c in data["curves"]] == [(mlp, 0), (mlp, 95), (cnn, 95)]
    assert data["curves"][2]["label"] == f"{cnn}: step 95"
    assert data["curves"][2]["count"] == 8 * 9  # the conv's weight
    steps = view(api, mlp, "histogram", compare=cnn, step=[10, 12])
    assert [(c["run_id"], c["step"]) for c in steps["curves"]] == [(mlp, 10), (cnn, 10)]
    assert any("no histogram at step 12" in note and "10, 15" in note for note in steps["notes"])
    png = api.get(f"/runs/{mlp}/plots/histogram.png", params={"compare": cnn})
    assert png.headers[DOWNSAMPLED] == "false"
    assert_drawn(png.content)


def test_histogram_samples_and_constants(api: httpx.Client, crafted: str) -> None:
    data = view(api, crafted, "histogram", kind="activation", tensor="h", step=[0, 5, 7])
    assert [c["step"] for c in data["curves"]] == [0, 7]  # 5 is empty
    assert data["curves"][0]["label"] == "step 0 (sampled from 500)"
    assert any("step 5 skipped" in note for note in data["notes"])
    constant = data["curves"][1]
    assert len(constant["values"]) == 1
    assert constant["edges"][0] < 0.25 < constant["edges"][1]
    assert constant["values"][0] * np.diff(constant["edges"])[0] == pytest.approx(1.0)
    png = api.get(f"/runs/{crafted}/plots/histogram.png",
                  params={"kind": "activation", "tensor": "h", "step": [0, 7]})  # fmt: skip
    assert_drawn(png.content)


def test_histogram_refuses_nonsense(api: httpx.Client, gallery_runs: GalleryRuns) -> None:
    url = f"/runs/{gallery_runs.mlp}/plots/histogram"
    assert_error(api.get(f"{url}.json", params={"tensor": "nope"}), 404, "nope")
    assert_error(api.get(f"{url}.json", params={"compare": "no-such-run"}), 404, "no-such-run")
    assert_error(api.get(f"{url}.png", params={"step": list(range(17))}), 422, "step")
    assert_error(api.get(f"{url}.json", params={"step": -1}), 422, "step")
    # the cnn has no `2.weight`: a compared run without the tensor is named
    other = {"tensor": "2.weight", "compare": gallery_runs.cnn}
    assert_error(api.get(f"{url}.json", params=other), 404, "2.weight")


# -- gradient-flow ---------------------------------------------------------------------


def _series(api: httpx.Client, run_id: str, tensor: str, stat: str) -> np.ndarray:
    response = api.get(f"/runs/{run_id}/series",
                       params={"tensor": tensor, "kind": "grad", "stat": stat})  # fmt: skip
    return floats(response.json()["values"])


def test_gradient_flow_matches_the_series(api: httpx.Client, gallery_runs: GalleryRuns) -> None:
    run_id = gallery_runs.mlp
    data = view(api, run_id, "gradient-flow")
    assert data["layers"] == ["0.weight", "2.weight", "4.weight"]
    assert (data["step"], data["steps"], data["floor"]) == (95, list(range(0, 100, 5)), None)
    for i, layer in enumerate(data["layers"]):
        abs_mean = _series(api, run_id, layer, "abs_mean")
        low, high = _series(api, run_id, layer, "min"), _series(api, run_id, layer, "max")
        assert data["abs_mean"][i] == abs_mean[-1]
        assert data["abs_max"][i] == max(abs(low[-1]), abs(high[-1]))
        assert data["heatmap"][i] == abs_mean.tolist()
    with_bias = view(api, run_id, "gradient-flow", bias=True, step=50, part="bars")
    assert with_bias["layers"] == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    assert with_bias["step"] == 50
    assert with_bias["abs_mean"][1] == _series(api, run_id, "0.bias", "abs_mean")[10]
    assert (with_bias["steps"], with_bias["heatmap"]) == ([], [])
    thin = api.get(f"/runs/{run_id}/plots/gradient-flow.png", params={"max_steps": 3})
    assert thin.headers[DOWNSAMPLED] == "true"
    assert_drawn(thin.content)
    assert view(api, run_id, "gradient-flow", max_steps=3)["steps"] == [0, 50, 95]


def test_gradient_flow_counts_non_finite_and_clips_zeros(
    api: httpx.Client, gallery_runs: GalleryRuns, crafted: str
) -> None:
    odd = view(api, gallery_runs.odd, "gradient-flow")
    # bars at step 3 are finite; the heatmap's abs_mean holds NaN, Inf and -Inf
    assert (odd["step"], odd["abs_mean"], odd["abs_max"]) == (3, [1.0], [3.5])
    assert odd["heatmap"] == [["NaN", "Infinity", "-Infinity", 1.0]]
    assert "3 non-finite" in " ".join(odd["notes"])
    first = view(api, gallery_runs.odd, "gradient-flow", step=0, part="bars")
    assert (first["abs_mean"], first["abs_max"]) == (["NaN"], ["NaN"])
    assert "2 non-finite" in " ".join(first["notes"])
    nothing = api.get(f"/runs/{gallery_runs.odd}/plots/gradient-flow.png", params={"step": 0})
    assert png_size(nothing.content) == (900, 500)

    data = view(api, crafted, "gradient-flow", step=2)
    assert data["layers"] == ["a.weight", "b.weight"]
    assert data["abs_mean"][0] == 0.0  # the number stays true; the drawing clips it
    assert data["heatmap"][0] == [0.0, 0.5, 0.0, 2.0]
    assert data["floor"] == pytest.approx(0.05)  # a decade below the smallest positive value
    assert any("3 zero values" in note for note in data["notes"])
    missing = view(api, crafted, "gradient-flow", step=9, part="bars")
    assert missing["abs_mean"] == ["NaN", "NaN"]
    assert any("no gradient statistics at step 9" in note for note in missing["notes"])
    png = api.get(f"/runs/{crafted}/plots/gradient-flow.png", params={"step": 2})
    assert_drawn(png.content)


def test_gradient_flow_refuses_nonsense(api: httpx.Client, gallery_runs: GalleryRuns) -> None:
    url = f"/runs/{gallery_runs.mlp}/plots/gradient-flow"
    assert_error(api.get(f"{url}.json", params={"part": "heatmap", "step": 5}), 422, "step")
    assert_error(api.get(f"{url}.json", params={"part": "bars", "max_steps": 5}), 422, "max_steps")
    assert_error(api.get(f"{url}.png", params={"start": 9, "end": 3}), 422, "start")
    assert_error(api.get(f"{url}.json", params={"layer": "0"}), 422, "layer")


# -- weight-change ---------------------------------------------------------------------


def test_weight_change_matches_the_stored_changes(
    api: httpx.Client, gallery_runs: GalleryRuns
) -> None:
    run_id = gallery_runs.mlp
    data = view(api, run_id, "weight-change")
    assert data["layers"] == ["0.weight", "2.weight", "4.weight"]
    assert data["steps"] == list(range(0, 100, 5))
    assert [p["metric"] for p in data["panels"]] == ["since_prev", "update_ratio", "since_init"]
    assert [p["reference"] for p in data["panels"]] == [None, 1e-3, None]
    for i, layer in enumerate(data["layers"]):
        stored = api.get(f"/runs/{run_id}/weight-changes", params={"tensor": layer}).json()
        for panel in data["panels"]:
            np.testing.assert_array_equal(
                floats(panel["values"][i]), floats(stored[panel["metric"]])
            )
    # NaN since the previous capture at the first capture is expected, not a problem
    assert not any("non-finite" in note for note in data["notes"])
    assert any("bias" in note for note in data["notes"])
    one = view(api, run_id, "weight-change", metric="update_ratio", tensor=["4.bias", "0.weight"])
    assert (one["layers"], [p["metric"] for p in one["panels"]]) == (
        ["4.bias", "0.weight"], ["update_ratio"])  # fmt: skip
    thin = api.get(f"/runs/{run_id}/plots/weight-change.png", params={"max_steps": 4})
    assert thin.headers[DOWNSAMPLED] == "true"
    assert_drawn(thin.content)


def test_weight_change_notes_real_problems(api: httpx.Client, crafted: str) -> None:
    data = view(api, crafted, "weight-change")
    assert data["layers"] == ["w.weight"]
    since_init = data["panels"][2]
    assert since_init["values"][0] == [0.0, 0.01, "Infinity", 0.03]
    notes = " ".join(data["notes"])
    assert "since_init: 1 non-finite" in notes
    assert "since_prev" not in notes  # its NaN is at the first capture
    assert "zero or negative" not in notes  # since_init is 0 at the first capture by definition
    assert_drawn(api.get(f"/runs/{crafted}/plots/weight-change.png").content)


def test_weight_change_refuses_nonsense(api: httpx.Client, gallery_runs: GalleryRuns) -> None:
    url = f"/runs/{gallery_runs.mlp}/plots/weight-change"
    assert_error(api.get(f"{url}.json", params={"tensor": "0"}), 404, "`0`")  # an activation
    assert_error(api.get(f"{url}.json", params={"metric": "since_ever"}), 422, "metric")
    assert_error(api.get(f"{url}.png", params={"start": 9, "end": 3}), 422, "start")


# -- dead-units ------------------------------------------------------------------------


def _unit_means(api: httpx.Client, run_id: str, tensor: str) -> np.ndarray:
    response = api.get(f"/runs/{run_id}/unit-means", params={"tensor": tensor})
    return floats(response.json()["values"])  # (steps, units)


def test_dead_units_match_the_unit_means(api: httpx.Client, gallery_runs: GalleryRuns) -> None:
    run_id = gallery_runs.mlp
    data = view(api, run_id, "dead-units")
    assert data["layers"] == ["0", "1", "2", "3", "4"]
    assert data["units"] == [32, 32, 16, 16, 10]
    assert data["steps"] == list(range(0, 100, 5))
    latest = []
    for layer, fractions in zip(data["layers"], data["fractions"], strict=True):
        means = _unit_means(api, run_id, layer)
        np.testing.assert_allclose(fractions, (means == 0).mean(axis=1))
        latest.append((means[-1] == 0).mean())
    assert max(latest) > 0  # ReLUs in a trained MLP lose some units
    assert data["tensor"] == data["layers"][int(np.argmax(latest))]
    means = _unit_means(api, run_id, data["tensor"])
    np.testing.assert_array_equal(floats(data["heatmap"]), means.T)
    loose = view(api, run_id, "dead-units", eps=0.01, part="fractions")
    assert (loose["tensor"], loose["heatmap"]) == (None, [])
    near_zero = np.abs(_unit_means(api, run_id, "1")) <= 0.01
    np.testing.assert_allclose(loose["fractions"][1], near_zero.mean(axis=1))
    capped = api.get(f"/runs/{run_id}/plots/dead-units.json",
                     params={"tensor": "1", "max_units": 4, "max_steps": 5})  # fmt: skip
    assert capped.headers[DOWNSAMPLED] == "true"
    capped_data = capped.json()
    assert (len(capped_data["heatmap"]), capped_data["tensor_units"]) == (4, 32)
    assert capped_data["steps"] == [0, 25, 50, 70, 95]
    png = api.get(f"/runs/{run_id}/plots/dead-units.png", params={"part": "heatmap", "tensor": "1"})
    assert_drawn(png.content)


def test_dead_units_signed_means_and_eps(api: httpx.Client, crafted: str) -> None:
    data = view(api, crafted, "dead-units")
    assert (data["layers"], data["steps"]) == (["u"], [0, 1])
    assert data["fractions"] == [[0.5, 0.5]]
    assert data["heatmap"] == [[0.0, 0.0], [-1.0, 0.5], [0.0, pytest.approx(1e-3)], [2.0, 0.0]]
    loose = view(api, crafted, "dead-units", eps=0.01)
    assert loose["fractions"] == [[0.5, 0.75]]
    assert_drawn(api.get(f"/runs/{crafted}/plots/dead-units.png").content)


def test_dead_units_refuse_nonsense(api: httpx.Client, gallery_runs: GalleryRuns) -> None:
    url = f"/runs/{gallery_runs.mlp}/plots/dead-units"
    assert_error(api.get(f"{url}.json", params={"tensor": "nope"}), 404, "nope")
    assert_error(api.get(f"{url}.json", params={"part": "fractions", "tensor": "1"}), 422, "tensor")
    assert_error(api.get(f"{url}.json", params={"eps": -1}), 422, "eps")
    assert_error(api.get(f"{url}.json", params={"eps": "nan"}), 422, "eps")
    assert_error(api.get(f"{url}.png", params={"max_units": 0}), 422, "max_units")
