"""The probe views `layer-outputs`, `feature-maps`, `attributions` and the `model` view.

Numbers are checked against the stored probe read back over HTTP and decoded
here with NumPy (base64 little-endian float16 / float32 / int32), and the model
table against ``GET /runs/{id}/model``.
"""

from __future__ import annotations

import base64
import math
from typing import Any

import httpx
import numpy as np
import pytest
from batches import body, make_batch, model_tree, new_id
from gallery import GalleryRuns
from images import assert_drawn

VIEWS = ("layer-outputs", "feature-maps", "attributions", "model")
F16 = {"rtol": 1e-3, "atol": 1e-3}  # float16's precision, relative and near zero


def unpack(data: str, dtype: str, shape: list[int]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(data), dtype=dtype).reshape(shape)


def stored_probe(api: httpx.Client, run_id: str, step: int) -> dict[str, Any]:
    response = api.get(f"/runs/{run_id}/probes/{step}")
    response.raise_for_status()
    probe: dict[str, Any] = response.json()
    probe["by_name"] = {layer["name"]: layer for layer in probe["layers"]}
    return probe


def features(layer: dict[str, Any]) -> np.ndarray:
    return unpack(layer["features"], "<f2", layer["features_shape"]).astype(np.float64)


def classes(probe: dict[str, Any], field: str) -> np.ndarray:
    return unpack(probe[field], "<i4", [probe["samples"]])


def plot(api: httpx.Client, run_id: str, view: str, fmt: str = "json", **params: Any) -> Any:
    response = api.get(f"/runs/{run_id}/plots/{view}.{fmt}", params=params)
    assert response.status_code == 200, response.text
    return response.json() if fmt == "json" else response


# -- layer-outputs --------------------------------------------------------------------


def test_layer_outputs_pair_each_linear_with_its_relu(
    api: httpx.Client, gallery_runs: GalleryRuns
) -> None:
    data = plot(api, gallery_runs.mlp, "layer-outputs")
    assert (data["step"], data["sample"], data["samples"]) == (100, 0, 200)
    rows = [(r["raw"] and (r["raw"]["layer"], r["raw"]["type"]),
             r["activated"] and (r["activated"]["layer"], r["activated"]["type"]))
            for r in data["rows"]]  # fmt: skip
    assert rows == [(("0", "Linear"), ("1", "ReLU")), (("2", "Linear"), ("3", "ReLU")),
                    (("4", "Linear"), None)]  # fmt: skip

    sample = 7
    data = plot(api, gallery_runs.mlp, "layer-outputs", step=50, sample=sample)
    probe = stored_probe(api, gallery_runs.mlp, 50)
    label, predicted = classes(probe, "labels")[sample], classes(probe, "predictions")[sample]
    assert (data["label"], data["prediction"]) == (label, predicted)
    assert f"label {label}, predicted {predicted}" in data["title"]
    assert data["downsampled"] is False
    for row in data["rows"]:
        for side in (row["raw"], row["activated"]):
            if side is not None:
                expected = features(probe["by_name"][side["layer"]])[sample]
                assert side["values"] == expected.tolist()  # float16 decodes exactly
                assert side["indices"] == list(range(expected.size))
        if row["activated"] is not None:
            raw, activated = np.array(row["raw"]["values"]), np.array(row["activated"]["values"])
            np.testing.assert_allclose(activated, np.maximum(raw, 0), **F16)
            assert (activated == 0).any()  # the ReLU cut something


def test_layer_outputs_thin_wide_layers(api: httpx.Client, gallery_runs: GalleryRuns) -> None:
    response = plot(api, gallery_runs.cnn, "layer-outputs", max_features=100)
    assert response["downsampled"] is True
    conv, relu = response["rows"][0]["raw"], response["rows"][0]["activated"]
    assert (conv["type"], relu["type"], conv["features"], conv["shape"]) == (
        "Conv2d", "ReLU", 512, [8, 8, 8],
    )  # fmt: skip
    assert len(conv["indices"]) == 100
    assert conv["indices"][0] == 0
    assert conv["indices"][-1] == 511
    flat = features(stored_probe(api, gallery_runs.cnn, 100)["by_name"]["0"])[0].reshape(-1)
    assert conv["values"] == flat[conv["indices"]].tolist()
    assert conv["indices"] == relu["indices"]  # the same picks side by side
    png = api.get(f"/runs/{gallery_runs.cnn}/plots/layer-outputs.png", params={"sample": 3})
    assert png.headers["x-layerwatch-downsampled"] == "true"  # 512 > 256
    assert_drawn(png.content)


# -- feature-maps ---------------------------------------------------------------------


def test_feature_maps_of_the_conv_layer(api: httpx.Client, gallery_runs: GalleryRuns) -> None:
    data = plot(api, gallery_runs.cnn, "feature-maps", sample=2)
    probe = stored_probe(api, gallery_runs.cnn, 100)
    conv = probe["by_name"]["0"]
    maps = unpack(conv["maps"], "<f2", conv["maps_shape"]).astype(np.float64)[2]  # (8, 8, 8)
    assert (data["layer"], data["layers_with_maps"], data["channels"]) == ("0", ["0", "1", "2"], 8)
    assert data["maps"] == maps.tolist()
    assert data["mins"] == maps.min(axis=(1, 2)).tolist()
    assert data["maxs"] == maps.max(axis=(1, 2)).tolist()
    assert data["label"] == classes(probe, "labels")[2]
    assert data["downsampled"] is False

    few = plot(api, gallery_runs.cnn, "feature-maps", layer="2", max_channels=3, step=25)
    assert np.asarray(few["maps"]).shape == (3, 4, 4)
    assert few["downsampled"] is True
    assert "the first 3 of 8 channels" in few["notes"]
    for params in ({}, {"normalize": "layer", "layer": "1", "max_channels": 5}):
        assert_drawn(plot(api, gallery_runs.cnn, "feature-maps", "png", **params).content)


# -- attributions ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("run", "shape"), [("mlp", [4, 64]), ("cnn", [4, 1, 8, 8])], ids=["mlp", "cnn"]
)
def test_attributions_as_images(
    api: httpx.Client, gallery_runs: GalleryRuns, run: str, shape: list[int]
) -> None:
    run_id = getattr(gallery_runs, run)
    data = plot(api, run_id, "attributions")
    stored = stored_probe(api, run_id, 100)
    explained = stored["attributions"]
    values = unpack(explained["values"], "<f4", explained["shape"]).astype(np.float64)
    assert explained["shape"] == shape
    assert (data["step"], data["steps"], data["mode"]) == (100, [25, 50, 75, 100], "image")
    assert data["input_shape"] == shape[1:]
    images = values.reshape(4, 8, 8) if run == "mlp" else values.sum(axis=1)  # 64 -> 8x8
    assert [s["sample"] for s in data["samples"]] == [0, 1, 2, 3]
    np.testing.assert_allclose([s["values"] for s in data["samples"]], images, rtol=1e-6)
    assert [s["target"] for s in data["samples"]] == unpack(
        explained["targets"], "<i4", [4]
    ).tolist()
    assert [s["delta"] for s in data["samples"]] == explained["deltas"]
    assert [s["label"] for s in data["samples"]] == classes(stored, "labels")[:4].tolist()
    np.testing.assert_allclose([s["total"] for s in data["samples"]],
                               values.reshape(4, -1).sum(axis=1), rtol=1e-6)  # fmt: skip
    assert_drawn(plot(api, run_id, "attributions", "png").content)


def test_attributions_as_bars(api: httpx.Client, gallery_runs: GalleryRuns) -> None:
    data = plot(api, gallery_runs.mlp, "attributions", as_image=False, max_features=5,
                sample=[3, 1], step=25)  # fmt: skip
    explained = stored_probe(api, gallery_runs.mlp, 25)["attributions"]
    values = unpack(explained["values"], "<f4", [4, 64]).astype(np.float64)
    assert (data["mode"], data["downsampled"]) == ("bars", True)
    assert [s["sample"] for s in data["samples"]] == [3, 1]
    for shown in data["samples"]:
        row = values[shown["sample"]]
        top = np.argsort(-np.abs(row), kind="stable")[:5]
        assert shown["indices"] == top.tolist()
        assert shown["values"] == row[top].tolist()
    assert_drawn(plot(api, gallery_runs.mlp, "attributions", "png", as_image=False).content)


# -- model ----------------------------------------------------------------------------


@pytest.mark.parametrize("run", ["mlp", "cnn"])
def test_model_table_matches_the_stored_tree(
    api: httpx.Client, gallery_runs: GalleryRuns, run: str
) -> None:
    run_id = getattr(gallery_runs, run)
    [tree] = api.get(f"/runs/{run_id}/model").json()["data"]
    data = plot(api, run_id, "model")
    assert (data["model"], data["total_params"], data["modules"]) == (
        tree["name"], tree["params"], len(tree["modules"]),
    )  # fmt: skip
    assert data["total_params"] == sum(m["params"] for m in tree["modules"])
    assert data["trainable_params"] == sum(m["trainable"] for m in tree["modules"])
    assert f"{tree['params']:,} parameters" in data["title"]
    keys = ("path", "type", "params", "trainable", "inputs", "outputs")
    assert [{k: r[k] for k in keys} for r in data["rows"]] == tree["modules"]
    assert [r["depth"] for r in data["rows"]] == [0, 1, 1, 1, 1, 1]
    capped = plot(api, run_id, "model", max_rows=2)
    assert (len(capped["rows"]), capped["modules"], capped["downsampled"]) == (2, 6, True)
    assert_drawn(plot(api, run_id, "model", "png").content)


# -- a hand-made probe: no attributions, no maps, non-finite values -------------------


@pytest.fixture(scope="module")
def hand_run(api: httpx.Client) -> str:
    """Linear `fc1` with NaN and inf, then ReLU `act`; a model tree, no maps, no attributions."""
    run_id = new_id("r")
    api.post("/runs", json={"id": run_id, "project": new_id("p")}).raise_for_status()
    tree = model_tree("Net")
    api.post(f"/runs/{run_id}/batches", content=body(make_batch(models=[tree]))).raise_for_status()
    fc1 = np.random.default_rng(0).standard_normal((3, 16)).astype("<f2")
    fc1[0, :2] = [np.nan, np.inf]
    act = np.maximum(fc1, 0)

    def layer(name: str, values: np.ndarray) -> dict[str, Any]:
        return {"name": name, "features_shape": list(values.shape),
                "features": base64.b64encode(values.tobytes()).decode()}  # fmt: skip

    probe = {"step": 4, "samples": 3, "layers": [layer("fc1", fc1), layer("act", act)]}
    api.post(f"/runs/{run_id}/probes", json=probe).raise_for_status()
    return run_id


def test_a_probe_without_extras(api: httpx.Client, hand_run: str) -> None:
    data = plot(api, hand_run, "layer-outputs")
    [row] = data["rows"]
    assert (row["raw"]["layer"], row["activated"]["type"]) == ("fc1", "ReLU")
    assert row["raw"]["values"][:2] == ["NaN", "Infinity"]
    assert (data["label"], data["prediction"]) == (None, None)
    assert any("4 non-finite" in note for note in data["notes"])  # NaN, inf in both
    assert_drawn(plot(api, hand_run, "layer-outputs", "png").content)

    attributions = plot(api, hand_run, "attributions")
    assert attributions["samples"] == []
    assert "probe_attributions=" in attributions["notes"][0]
    assert "attribution" in attributions["notes"][0]
    maps = plot(api, hand_run, "feature-maps")
    assert (maps["maps"], maps["layers_with_maps"]) == ([], [])
    assert "no layer of the probe at step 4 has feature maps" in maps["notes"][0]
    response = api.get(f"/runs/{hand_run}/plots/feature-maps.json", params={"layer": "fc1"})
    assert response.status_code == 422
    assert "`fc1` has no feature maps" in response.text


# -- every view, every gallery run, defaults; bad parameters -------------------------


@pytest.mark.parametrize("view", VIEWS)
def test_defaults_answer_on_every_gallery_run(
    api: httpx.Client, gallery_runs: GalleryRuns, view: str
) -> None:
    for name, run_id in gallery_runs.all.items():
        data = plot(api, run_id, view)
        png = plot(api, run_id, view, "png")
        assert png.headers["content-type"] == "image/png"
        assert_drawn(png.content)
        drawn = data.get("rows") or data.get("maps") or data.get("samples")
        if name in ("empty", "single", "odd") or (name == "mlp" and view == "feature-maps"):
            assert not drawn, name
            assert data["notes"], name  # a "no data" image says why
        else:
            assert drawn, name


@pytest.mark.parametrize(
    ("run", "view", "params", "status", "word"),
    [
        ("mlp", "layer-outputs", {"sample": 200}, 422, "`sample` 200"),
        ("mlp", "layer-outputs", {"sample": -1}, 422, "sample"),
        ("mlp", "layer-outputs", {"step": 26}, 404, "`step` 26"),
        ("mlp", "layer-outputs", {"layer": "fc9"}, 404, "fc9"),
        ("mlp", "layer-outputs", {"max_features": 1}, 422, "max_features"),
        ("mlp", "layer-outputs", {"colour": "red"}, 422, "colour"),
        ("empty", "layer-outputs", {"step": 0}, 404, "`step` 0"),
        ("empty", "layer-outputs", {"layer": "fc1"}, 404, "fc1"),
        ("cnn", "feature-maps", {"sample": 16}, 422, "first 16 probe samples"),
        ("cnn", "feature-maps", {"layer": "4"}, 422, "`0`, `1`, `2`"),
        ("cnn", "feature-maps", {"layer": "conv9"}, 404, "conv9"),
        ("cnn", "feature-maps", {"normalize": "global"}, 422, "normalize"),
        ("cnn", "feature-maps", {"max_channels": 0}, 422, "max_channels"),
        ("mlp", "feature-maps", {"layer": "0"}, 422, "layers with maps: none"),
        ("single", "feature-maps", {"layer": "fc1"}, 404, "fc1"),
        ("mlp", "attributions", {"sample": 4}, 422, "`sample` 4"),
        ("mlp", "attributions", {"step": 10**6}, 404, f"`step` {10**6}"),
        ("mlp", "attributions", {"as_image": "maybe"}, 422, "as_image"),
        ("mlp", "attributions", {"max_features": 0}, 422, "max_features"),
        ("odd", "attributions", {"step": 3}, 404, "`step` 3"),
        ("mlp", "model", {"model": "Transformer"}, 404, "Transformer"),
        ("mlp", "model", {"max_rows": 0}, 422, "max_rows"),
        ("mlp", "model", {"rank": -1}, 422, "rank"),
    ],
)
def test_bad_parameters_are_named(
    api: httpx.Client, gallery_runs: GalleryRuns, run: str, view: str,
    params: dict[str, Any], status: int, word: str,
) -> None:  # fmt: skip
    run_id = getattr(gallery_runs, run)
    for fmt in ("json", "png"):
        response = api.get(f"/runs/{run_id}/plots/{view}.{fmt}", params=params)
        assert response.status_code == status, response.text
        assert word in response.text


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
    data = plot(api, run_id, "attributions")
    assert (data["step"], data["mode"], data["downsampled"]) == (9, "bars", False)
    assert data["samples"][0]["indices"] == list(range(10))  # -1 first, then up toward 0
    assert data["samples"][1]["indices"][0] == 9  # 1.0
    assert math.isclose(data["samples"][1]["total"], float(values[1].sum()), rel_tol=1e-6)
    assert data["samples"][0]["delta"] is None
    response = api.get(f"/runs/{run_id}/plots/attributions.json", params={"as_image": True})
    assert response.status_code == 422
    assert "`as_image`" in response.text


@pytest.mark.parametrize(
    "size",
    [{"width": 200, "height": 150, "dpi": 300}, {"width": 300, "height": 2000, "dpi": 50}],
    ids=["tiny-300dpi", "tall"],
)
def test_small_and_odd_sized_images(
    api: httpx.Client, gallery_runs: GalleryRuns, size: dict[str, int]
) -> None:
    """Texts shrink with the image, so the layout never gives up (a warning: a 500 here)."""
    for run_id in (gallery_runs.cnn, gallery_runs.empty):
        for view in VIEWS:
            png = plot(api, run_id, view, "png", **size).content
            assert_drawn(png, size["width"], size["height"])
