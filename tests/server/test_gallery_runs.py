"""The gallery fixture holds what the views are tested on."""

from __future__ import annotations

import httpx
from gallery import GalleryRuns


def test_gallery_runs_exist(gallery_runs: GalleryRuns, api: httpx.Client) -> None:
    for name, run_id in gallery_runs.all.items():
        assert api.get(f"/runs/{run_id}").status_code == 200, name
    probes = api.get(f"/runs/{gallery_runs.mlp}/probes").json()["data"]
    assert tuple(p["step"] for p in probes) == gallery_runs.probe_steps
    assert probes[0]["attributions"] == [4, 64]
    cnn = api.get(f"/runs/{gallery_runs.cnn}/probes").json()["data"]
    assert cnn[0]["attributions"] == [4, 1, 8, 8]
    assert any(layer["maps_shape"] for layer in cnn[0]["layers"])
