"""What the probe views share: named steps and layers must exist, bad parameters are named,
awkward probes give notes instead of errors, and images of any size render."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import numpy as np
import pytest
from batches import body, make_batch, model_tree, new_id
from gallery import DETAIL_VIEWS, PROBE_VIEWS, GalleryRuns
from images import assert_drawn, png, view


@pytest.mark.parametrize("name", PROBE_VIEWS)
def test_named_steps_and_layers_that_do_not_exist_are_404(
    api: httpx.Client, gallery_runs: GalleryRuns, name: str
) -> None:
    for run_id in (gallery_runs.mlp, gallery_runs.empty):
        for fmt in ("json", "png"):
            response = api.get(f"/runs/{run_id}/plots/{name}.{fmt}", params={"step": 26})
            assert response.status_code == 404
            assert "step 26" in response.json()["detail"]
    assert api.get(f"/runs/nope/plots/{name}.json").status_code == 404
    if name != "confusion":
        for run_id in (gallery_runs.mlp, gallery_runs.single):
            response = api.get(f"/runs/{run_id}/plots/{name}.json", params={"layer": "fc9"})
            assert response.status_code == 404
            assert "`fc9`" in response.json()["detail"]


@pytest.mark.parametrize(
    ("name", "params", "parameter"),
    [
        ("scatter", {"max_points": 1}, "max_points"),
        ("scatter", {"max_panels": 0}, "max_panels"),
        ("scatter", {"grid": "maybe"}, "grid"),
        ("scatter", {"step": -1}, "step"),
        ("embedding", {"method": "umap"}, "method"),
        ("embedding", {"perplexity": 0}, "perplexity"),
        ("class-means", {"by": "colour"}, "by"),
        ("class-means", {"max_units": 0}, "max_units"),
        ("confusion", {"normalize": "rows"}, "normalize"),
        ("confusion", {"layer": "3"}, "layer"),  # confusion takes no layer
    ],
)
def test_invalid_parameters_are_422_naming_them(
    api: httpx.Client, gallery_runs: GalleryRuns, name: str, params: dict[str, Any],
    parameter: str,
) -> None:  # fmt: skip
    for fmt in ("json", "png"):
        response = api.get(f"/runs/{gallery_runs.mlp}/plots/{name}.{fmt}", params=params)
        assert response.status_code == 422
        assert parameter in str(response.json()["detail"])


@pytest.mark.parametrize(
    ("name", "params", "note"),
    [
        ("scatter", {}, "the layer has one feature: drawn along x"),  # the narrowest
        ("scatter", {"layer": "odd"}, "step 7: 3 samples with non-finite features left out"),
        ("scatter", {"layer": "flat"}, "the samples' features are all equal: nothing to project"),
        ("embedding", {}, "perplexity lowered to 1.667 for 6 samples"),
        ("embedding", {"layer": "odd"}, "3 samples with finite features: too few for t-SNE"),
        ("embedding", {"layer": "odd", "method": "pca"}, None),
        (
            "embedding",
            {"layer": "flat"},
            "the samples' features are all equal: every point is at 0",
        ),
        (
            "class-means",
            {"layer": "odd"},
            "3 non-finite unit values: their class means are NaN or infinite",
        ),
        ("class-means", {"layer": "flat"}, None),
        ("confusion", {}, None),
    ],
)
def test_awkward_probes_give_notes_not_errors(
    api: httpx.Client, awkward_run: str, name: str, params: dict[str, Any], note: str | None
) -> None:
    data = view(api, awkward_run, name, **params)
    if note is not None:
        assert note in data["notes"]
    assert_drawn(api.get(f"/runs/{awkward_run}/plots/{name}.png", params=params).content)


def test_awkward_class_means_and_embedding_values(api: httpx.Client, awkward_run: str) -> None:
    flat = view(api, awkward_run, "class-means", layer="flat")
    assert flat["means"] == [[0.0] * 4] * 3
    assert flat["similarity"] == [["NaN"] * 3] * 3  # a zero vector has no direction
    odd = view(api, awkward_run, "class-means", layer="odd")
    assert odd["means"][0] == ["NaN", "Infinity", 3.5]
    assert odd["means"][1] == [7.5, 8.5, "-Infinity"]
    assert odd["means"][2] == [13.5, 14.5, 15.5]
    pca = view(api, awkward_run, "embedding", layer="odd", method="pca")
    assert pca["samples"] == [3, 4, 5]
    confusion = view(api, awkward_run, "confusion")
    assert confusion["counts"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert confusion["per_class_accuracy"] == [0.5, 1.0, 0.5]


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
    data = view(api, hand_run, "layer-outputs")
    [row] = data["rows"]
    assert (row["raw"]["layer"], row["activated"]["type"]) == ("fc1", "ReLU")
    assert row["raw"]["values"][:2] == ["NaN", "Infinity"]
    assert (data["label"], data["prediction"]) == (None, None)
    assert any("4 non-finite" in note for note in data["notes"])  # NaN, inf in both
    assert_drawn(png(api, hand_run, "layer-outputs").content)

    attributions = view(api, hand_run, "attributions")
    assert attributions["samples"] == []
    assert "attributions=8" in attributions["notes"][0]
    assert "attribution" in attributions["notes"][0]
    maps = view(api, hand_run, "feature-maps")
    assert (maps["maps"], maps["layers_with_maps"]) == ([], [])
    assert "no layer of the probe at step 4 has feature maps" in maps["notes"][0]
    response = api.get(f"/runs/{hand_run}/plots/feature-maps.json", params={"layer": "fc1"})
    assert response.status_code == 422
    assert "`fc1` has no feature maps" in response.text


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
        for name in DETAIL_VIEWS:
            image = png(api, run_id, name, **size).content
            assert_drawn(image, size["width"], size["height"])
