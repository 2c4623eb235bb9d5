"""The `attributions` view, checked against the stored integrated gradients."""

from __future__ import annotations

import base64
import math

import httpx
import numpy as np
import pytest
from batches import new_id
from gallery import GalleryRuns
from images import assert_drawn, png, view
from stored_probes import StoredProbe


@pytest.mark.parametrize(
    ("run", "shape"), [("mlp", [4, 64]), ("cnn", [4, 1, 8, 8])], ids=["mlp", "cnn"]
)
def test_attributions_as_images(
    api: httpx.Client, gallery_runs: GalleryRuns, run: str, shape: list[int]
) -> None:
    run_id = getattr(gallery_runs, run)
    data = view(api, run_id, "attributions")
    stored = StoredProbe(api, run_id, 100)
    explained = stored.raw["attributions"]
    values = stored.attributions()
    assert explained["shape"] == shape
    assert (data["step"], data["steps"], data["mode"]) == (100, [25, 50, 75, 100], "image")
    assert data["input_shape"] == shape[1:]
    images = values.reshape(4, 8, 8) if run == "mlp" else values.sum(axis=1)  # 64 -> 8x8
    assert [s["sample"] for s in data["samples"]] == [0, 1, 2, 3]
    np.testing.assert_allclose([s["values"] for s in data["samples"]], images, rtol=1e-6)
    assert [s["target"] for s in data["samples"]] == stored.attribution_targets().tolist()
    assert [s["delta"] for s in data["samples"]] == explained["deltas"]
    assert [s["label"] for s in data["samples"]] == stored.labels[:4].tolist()
    np.testing.assert_allclose([s["total"] for s in data["samples"]],
                               values.reshape(4, -1).sum(axis=1), rtol=1e-6)  # fmt: skip
    assert_drawn(png(api, run_id, "attributions").content)


def test_attributions_as_bars(api: httpx.Client, gallery_runs: GalleryRuns) -> None:
    data = view(api, gallery_runs.mlp, "attributions", as_image=False, max_features=5,
                sample=[3, 1], step=25)  # fmt: skip
    stored = StoredProbe(api, gallery_runs.mlp, 25)
    assert stored.raw["attributions"]["shape"] == [4, 64]
    values = stored.attributions()
    assert (data["mode"], data["downsampled"]) == ("bars", True)
    assert [s["sample"] for s in data["samples"]] == [3, 1]
    for shown in data["samples"]:
        row = values[shown["sample"]]
        top = np.argsort(-np.abs(row), kind="stable")[:5]
        assert shown["indices"] == top.tolist()
        assert shown["values"] == row[top].tolist()
    assert_drawn(png(api, gallery_runs.mlp, "attributions", as_image=False).content)


def test_flat_inputs_that_are_not_square(api: httpx.Client) -> None:
    """`as_image=true` on 10 input values: a 422; by default, bars."""
    run_id = new_id("r")
    api.post("/runs", json={"id": run_id, "project": new_id("p")}).raise_for_status()
    values = np.linspace(-1, 1, 20, dtype="<f4").reshape(2, 10)
    explained = {"shape": [2, 10], "values": base64.b64encode(values.tobytes()).decode(),
                 "targets": base64.b64encode(np.array([1, 0], "<i4").tobytes()).decode(),
                 "steps": 8}  # fmt: skip
    fc = np.zeros((3, 4), "<f2")
    layer = {
        "name": "fc",
        "features_shape": [3, 4],
        "features": base64.b64encode(fc.tobytes()).decode(),
    }
    probe = {"step": 9, "samples": 3, "layers": [layer], "attributions": explained}
    api.post(f"/runs/{run_id}/probes", json=probe).raise_for_status()
    data = view(api, run_id, "attributions")
    assert (data["step"], data["mode"], data["downsampled"]) == (9, "bars", False)
    assert data["samples"][0]["indices"] == list(range(10))  # -1 first, then up toward 0
    assert data["samples"][1]["indices"][0] == 9  # 1.0
    assert math.isclose(data["samples"][1]["total"], float(values[1].sum()), rel_tol=1e-6)
    assert data["samples"][0]["delta"] is None
    response = api.get(f"/runs/{run_id}/plots/attributions.json", params={"as_image": True})
    assert response.status_code == 422
    assert "`as_image`" in response.text
