"""The `dead-units` view, checked against the stored unit means (``/unit-means``)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from gallery import GalleryRuns
from images import DOWNSAMPLED, assert_drawn, assert_error, floats, view


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
