"""The `layer-outputs` and `feature-maps` views, checked against the stored probe."""

from __future__ import annotations

import httpx
import numpy as np
from gallery import GalleryRuns
from images import assert_drawn, png, view
from stored_probes import StoredProbe

F16 = {"rtol": 1e-3, "atol": 1e-3}  # float16's precision, relative and near zero


def test_layer_outputs_pair_each_linear_with_its_relu(
    api: httpx.Client, gallery_runs: GalleryRuns
) -> None:
    data = view(api, gallery_runs.mlp, "layer-outputs")
    assert (data["step"], data["sample"], data["samples"]) == (100, 0, 200)
    rows = [(r["raw"] and (r["raw"]["layer"], r["raw"]["type"]),
             r["activated"] and (r["activated"]["layer"], r["activated"]["type"]))
            for r in data["rows"]]  # fmt: skip
    assert rows == [(("0", "Linear"), ("1", "ReLU")), (("2", "Linear"), ("3", "ReLU")),
                    (("4", "Linear"), None)]  # fmt: skip

    sample = 7
    data = view(api, gallery_runs.mlp, "layer-outputs", step=50, sample=sample)
    probe = StoredProbe(api, gallery_runs.mlp, 50)
    label, predicted = probe.labels[sample], probe.predictions[sample]
    assert (data["label"], data["prediction"]) == (label, predicted)
    assert f"label {label}, predicted {predicted}" in data["title"]
    assert data["downsampled"] is False
    for row in data["rows"]:
        for side in (row["raw"], row["activated"]):
            if side is not None:
                expected = probe.features(side["layer"])[sample]
                assert side["values"] == expected.tolist()  # float16 decodes exactly
                assert side["indices"] == list(range(expected.size))
        if row["activated"] is not None:
            raw, activated = np.array(row["raw"]["values"]), np.array(row["activated"]["values"])
            np.testing.assert_allclose(activated, np.maximum(raw, 0), **F16)
            assert (activated == 0).any()  # the ReLU cut something


def test_layer_outputs_thin_wide_layers(api: httpx.Client, gallery_runs: GalleryRuns) -> None:
    response = view(api, gallery_runs.cnn, "layer-outputs", max_features=100)
    assert response["downsampled"] is True
    conv, relu = response["rows"][0]["raw"], response["rows"][0]["activated"]
    assert (conv["type"], relu["type"], conv["features"], conv["shape"]) == (
        "Conv2d", "ReLU", 512, [8, 8, 8],
    )  # fmt: skip
    assert len(conv["indices"]) == 100
    assert conv["indices"][0] == 0
    assert conv["indices"][-1] == 511
    flat = StoredProbe(api, gallery_runs.cnn, 100).features("0")[0].reshape(-1)
    assert conv["values"] == flat[conv["indices"]].tolist()
    assert conv["indices"] == relu["indices"]  # the same picks side by side
    png = api.get(f"/runs/{gallery_runs.cnn}/plots/layer-outputs.png", params={"sample": 3})
    assert png.headers["x-layerwatch-downsampled"] == "true"  # 512 > 256
    assert_drawn(png.content)


def test_feature_maps_of_the_conv_layer(api: httpx.Client, gallery_runs: GalleryRuns) -> None:
    data = view(api, gallery_runs.cnn, "feature-maps", sample=2)
    probe = StoredProbe(api, gallery_runs.cnn, 100)
    maps = probe.maps("0")[2]  # (8, 8, 8)
    assert (data["layer"], data["layers_with_maps"], data["channels"]) == ("0", ["0", "1", "2"], 8)
    assert data["maps"] == maps.tolist()
    assert data["mins"] == maps.min(axis=(1, 2)).tolist()
    assert data["maxs"] == maps.max(axis=(1, 2)).tolist()
    assert data["label"] == probe.labels[2]
    assert data["downsampled"] is False

    few = view(api, gallery_runs.cnn, "feature-maps", layer="2", max_channels=3, step=25)
    assert np.asarray(few["maps"]).shape == (3, 4, 4)
    assert few["downsampled"] is True
    assert "the first 3 of 8 channels" in few["notes"]
    for params in ({}, {"normalize": "layer", "layer": "1", "max_channels": 5}):
        assert_drawn(png(api, gallery_runs.cnn, "feature-maps", **params).content)
