"""The `distributions` view, checked against the stored histograms (``/histograms``)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from gallery import GalleryRuns
from images import DOWNSAMPLED, assert_drawn, assert_error, floats, view

PERCENTILES = [0.0, 6.68, 15.87, 30.85, 50.0, 69.15, 84.13, 93.32, 100.0]


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
