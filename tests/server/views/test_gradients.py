"""The `gradient-flow` view, checked against the stored gradient statistics (``/series``)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from gallery import GalleryRuns
from images import DOWNSAMPLED, assert_drawn, assert_error, floats, png_size, view


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
