"""The probe views: scatter, embedding, class-means and confusion, checked against NumPy.

Every number is recomputed here from the probe as stored (``GET
/runs/{id}/probes/{step}``, base64 float16 features), with NumPy and
scikit-learn.
"""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from batches import new_id
from gallery import GalleryRuns
from images import DOWNSAMPLED, assert_drawn, view
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sqlalchemy import Engine, text
from torch import nn

import layerwatch

VIEWS = ("scatter", "embedding", "class-means", "confusion")


class StoredProbe:
    """A probe read back over HTTP and decoded as the client packed it."""

    def __init__(self, api: httpx.Client, run_id: str, step: int) -> None:
        response = api.get(f"/runs/{run_id}/probes/{step}")
        response.raise_for_status()
        self.raw = response.json()
        self.labels = self._ints("labels")
        self.predictions = self._ints("predictions")

    def _ints(self, field: str) -> np.ndarray | None:
        value = self.raw[field]
        return None if value is None else np.frombuffer(base64.b64decode(value), "<i4")

    def features(self, name: str) -> np.ndarray:
        layer = next(layer for layer in self.raw["layers"] if layer["name"] == name)
        values = np.frombuffer(base64.b64decode(layer["features"]), "<f2")
        return values.astype(np.float64).reshape(layer["features_shape"])


def assert_same_up_to_sign(actual: np.ndarray, expected: np.ndarray) -> None:
    """PCA axes are defined up to their sign: compare each column either way."""
    for column in range(expected.shape[1]):
        a, e = actual[:, column], expected[:, column]
        sign = 1.0 if np.dot(a, e) >= 0 else -1.0
        np.testing.assert_allclose(sign * a, e, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def tiny_run(live_server: str) -> str:
    """A digits model with a 2-feature bottleneck, probed without labels on 50 samples."""
    data = load_digits()
    x = torch.tensor(data.data[:300], dtype=torch.float32) / 16.0
    y = torch.tensor(data.target[:300])
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(64, 2), nn.Linear(2, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with layerwatch.Run(live_server, project="gallery", name="tiny-2d") as run:
        run.watch(model, optimizer, every=5, probe=x[-50:])
        for i in range(10):
            loss = nn.functional.cross_entropy(
                model(x[i * 25 : (i + 1) * 25]), y[i * 25 : (i + 1) * 25]
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if i % 5 == 4:
                run.probe()
        return run.id


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(array.tobytes()).decode()


@pytest.fixture(scope="module")
def awkward_run(api: httpx.Client) -> str:
    """One probe of 6 samples: NaN and infinite features, a constant layer, a 1-feature layer."""
    run_id = new_id("r")
    api.post("/runs", json={"id": run_id, "project": new_id("p")}).raise_for_status()
    odd = np.arange(18, dtype="<f2").reshape(6, 3)
    odd[0, 0], odd[1, 1], odd[2, 2] = np.nan, np.inf, -np.inf
    layers = {"odd": odd, "flat": np.zeros((6, 4), "<f2"), "one": np.ones((6, 1), "<f2"),
              "out": np.arange(12, dtype="<f2").reshape(6, 2)}  # fmt: skip
    probe = {"step": 7, "samples": 6, "labels": _b64(np.array([0, 0, 1, 1, 2, 2], "<i4")),
             "predictions": _b64(np.array([0, 1, 1, 1, 2, 0], "<i4")),
             "layers": [{"name": name, "features_shape": list(values.shape),
                         "features": _b64(values)} for name, values in layers.items()]}  # fmt: skip
    api.post(f"/runs/{run_id}/probes", json=probe).raise_for_status()
    return run_id


# -- every view, every gallery run, defaults -------------------------------------------


@pytest.mark.parametrize("name", VIEWS)
def test_defaults_render_on_every_gallery_run(
    api: httpx.Client, gallery_runs: GalleryRuns, name: str
) -> None:
    for kind, run_id in gallery_runs.all.items():
        png = api.get(f"/runs/{run_id}/plots/{name}.png")
        assert png.status_code == 200, (kind, png.text)
        assert png.headers["content-type"] == "image/png"
        assert_drawn(png.content)
        data = view(api, run_id, name)
        assert data["view"] == name
        if kind in ("empty", "single", "odd"):
            assert data["notes"] == [
                f"run `{run_id}` has no probes (rank 0): see `watch(probe=...)`"
            ], kind
        else:
            assert data["notes"] == [], (kind, data["notes"])
    small = api.get(f"/runs/{gallery_runs.cnn}/plots/{name}.png", params={"width": 400,
                    "height": 300, "dpi": 60})  # fmt: skip
    assert_drawn(small.content, 400, 300)


# -- scatter ----------------------------------------------------------------------------


def test_scatter_projects_the_narrowest_hidden_layer_with_pca(
    api: httpx.Client, gallery_runs: GalleryRuns
) -> None:
    for run_id in (gallery_runs.mlp, gallery_runs.cnn):
        data = view(api, run_id, "scatter")
        # MLP: 32, 32, 16, 16, 10 features; CNN: 512, 512, 128, 128, 10: ties go to the later.
        assert (data["layer"], data["projection"], data["grid"]) == ("3", "pca", False)
        [panel] = data["panels"]
        assert panel["step"] == 100
        probe = StoredProbe(api, run_id, 100)
        features = probe.features("3").reshape(200, -1)
        pca = PCA(n_components=2, svd_solver="full").fit(features)
        assert panel["samples"] == list(range(200))
        xy = np.column_stack([panel["x"], panel["y"]])
        assert_same_up_to_sign(xy, pca.transform(features))
        np.testing.assert_allclose(data["explained_variance_ratio"],
                                   pca.explained_variance_ratio_, rtol=1e-6)  # fmt: skip
        assert panel["labels"] == probe.labels.tolist()
        assert panel["predictions"] == probe.predictions.tolist()
        assert (data["color_by"], data["classes"]) == ("label", list(range(10)))
        assert data["axis_labels"][0].startswith("PC1 (")
        assert data["xlim"][0] < xy[:, 0].min()
        assert xy[:, 0].max() < data["xlim"][1]


def test_scatter_of_a_two_feature_layer_draws_the_features(
    api: httpx.Client, tiny_run: str
) -> None:
    data = view(api, tiny_run, "scatter")
    assert (data["layer"], data["projection"]) == ("0", "features")
    assert data["explained_variance_ratio"] is None
    [panel] = data["panels"]
    probe = StoredProbe(api, tiny_run, panel["step"])
    features = probe.features("0")
    assert panel["x"] == features[:, 0].tolist()
    assert panel["y"] == features[:, 1].tolist()
    assert probe.labels is None
    assert (data["color_by"], panel["labels"]) == ("prediction", None)
    assert panel["predictions"] == probe.predictions.tolist()
    assert_drawn(api.get(f"/runs/{tiny_run}/plots/scatter.png").content)


def test_scatter_grid_uses_one_projection_for_every_step(
    api: httpx.Client, gallery_runs: GalleryRuns
) -> None:
    run_id = gallery_runs.mlp
    response = api.get(f"/runs/{run_id}/plots/scatter.json", params={"grid": True, "layer": "1"})
    assert response.headers[DOWNSAMPLED] == "false"
    data = response.json()
    assert [panel["step"] for panel in data["panels"]] == [25, 50, 75, 100]
    blocks = [StoredProbe(api, run_id, step).features("1") for step in (25, 50, 75, 100)]
    pca = PCA(n_components=2, svd_solver="full").fit(np.concatenate(blocks))
    np.testing.assert_allclose(data["explained_variance_ratio"], pca.explained_variance_ratio_,
                               rtol=1e-6)  # fmt: skip
    shown = np.concatenate([np.column_stack([p["x"], p["y"]]) for p in data["panels"]])
    assert_same_up_to_sign(shown, pca.transform(np.concatenate(blocks)))
    assert data["xlim"][0] < shown[:, 0].min()
    assert shown[:, 0].max() < data["xlim"][1]
    assert data["ylim"][0] < shown[:, 1].min()
    assert shown[:, 1].max() < data["ylim"][1]

    thin = api.get(f"/runs/{run_id}/plots/scatter.json",
                   params={"grid": True, "max_panels": 3, "max_points": 50})  # fmt: skip
    assert thin.headers[DOWNSAMPLED] == "true"
    thin_data = thin.json()
    assert thin_data["downsampled"] is True
    steps = [panel["step"] for panel in thin_data["panels"]]
    assert (len(steps), steps[0], steps[-1]) == (3, 25, 100)  # first and last kept
    for panel in thin_data["panels"]:
        assert len(panel["samples"]) == 50
        assert (panel["samples"][0], panel["samples"][-1]) == (0, 199)
    png = api.get(f"/runs/{run_id}/plots/scatter.png", params={"grid": True})
    assert png.headers[DOWNSAMPLED] == "false"
    assert_drawn(png.content)


# -- embedding --------------------------------------------------------------------------


def _cached(engine: Engine, run_id: str) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT layer, step, method, perplexity, points, coordinates FROM embeddings "
                 "WHERE run_id = :run_id ORDER BY method, perplexity"), {"run_id": run_id},
        )  # fmt: skip
        return [tuple(row) for row in rows]


def test_embedding_is_computed_once_then_read_from_the_cache(
    api: httpx.Client, gallery_runs: GalleryRuns, engine: Engine
) -> None:
    run_id = gallery_runs.mlp
    params = {"perplexity": 21.5}
    first = api.get(f"/runs/{run_id}/plots/embedding.json", params=params)
    assert first.status_code == 200
    data = first.json()
    probe = StoredProbe(api, run_id, 100)
    chosen = (data["layer"], data["step"], data["method"], data["perplexity"])
    assert chosen == ("3", 100, "tsne", 21.5)
    assert data["input_dims"] == 16
    assert data["samples"] == list(range(200))
    assert data["labels"] == probe.labels.tolist()
    assert (data["color_by"], data["classes"]) == ("label", list(range(10)))
    [row] = [row for row in _cached(engine, run_id) if row[3] == 21.5]
    assert row[:5] == ("3", 100, "tsne", 21.5, 200)
    stored = np.frombuffer(bytes(row[5]), "<f4").reshape(-1, 2)
    assert stored[:, 0].tolist() == data["x"]
    assert stored[:, 1].tolist() == data["y"]

    second = api.get(f"/runs/{run_id}/plots/embedding.json", params=params)
    assert second.content == first.content

    # Proof that the second answer came from the table: change the row, see it served.
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE embeddings SET coordinates = :data WHERE run_id = :run_id AND "
                 "perplexity = 21.5"),
            {"data": np.full((200, 2), 7.0, "<f4").tobytes(), "run_id": run_id},
        )  # fmt: skip
    third = view(api, run_id, "embedding", **params)
    assert set(third["x"]) == {7.0}


def test_embedding_requests_at_once_store_one_row(
    api: httpx.Client, gallery_runs: GalleryRuns, engine: Engine
) -> None:
    run_id = gallery_runs.cnn
    with ThreadPoolExecutor(2) as pool:
        url = f"/runs/{run_id}/plots/embedding.json"
        answers = list(pool.map(lambda _: api.get(url, params={"perplexity": 12}), range(2)))
    assert [answer.status_code for answer in answers] == [200, 200]
    assert answers[0].json()["x"] == answers[1].json()["x"]
    assert [row[3] for row in _cached(engine, run_id)].count(12.0) == 1


def test_embedding_by_pca_and_a_lowered_perplexity(
    api: httpx.Client, gallery_runs: GalleryRuns, tiny_run: str
) -> None:
    data = view(api, gallery_runs.mlp, "embedding", method="pca", layer="0", step=50)
    features = StoredProbe(api, gallery_runs.mlp, 50).features("0")
    expected = PCA(n_components=2, svd_solver="full").fit_transform(features)
    assert_same_up_to_sign(np.column_stack([data["x"], data["y"]]), expected)
    assert (data["perplexity"], data["axis_labels"]) == (None, ["PCA 1", "PCA 2"])

    low = view(api, tiny_run, "embedding")  # 50 samples: perplexity at most 49 / 3
    assert low["perplexity"] == pytest.approx(49 / 3)
    assert low["notes"] == ["perplexity lowered to 16.33 for 50 samples"]
    assert (low["color_by"], len(low["x"])) == ("prediction", 50)
    assert_drawn(api.get(f"/runs/{tiny_run}/plots/embedding.png").content)


# -- class-means ------------------------------------------------------------------------


def _class_means(units: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    classes = np.unique(groups)
    means = np.stack([units[groups == c].mean(axis=0) for c in classes])
    unit = means / np.linalg.norm(means, axis=1, keepdims=True)
    return means, unit @ unit.T


def test_class_means_and_their_similarity_match_numpy(
    api: httpx.Client, gallery_runs: GalleryRuns
) -> None:
    run_id = gallery_runs.mlp
    data = view(api, run_id, "class-means")
    probe = StoredProbe(api, run_id, 100)
    assert (data["layer"], data["step"], data["by"], data["unit_kind"]) == ("3", 100, "label",
                                                                            "unit")  # fmt: skip
    means, similarity = _class_means(probe.features("3"), probe.labels)
    assert data["classes"] == list(range(10))
    assert data["counts"] == np.bincount(probe.labels).tolist()
    assert (data["units"], data["total_units"]) == (list(range(16)), 16)
    np.testing.assert_allclose(np.asarray(data["means"], dtype=float), means, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(data["similarity"], dtype=float), similarity,
                               rtol=1e-9, atol=1e-12)  # fmt: skip

    by_prediction = view(api, run_id, "class-means", by="prediction", step=25)
    early = StoredProbe(api, run_id, 25)
    means, _ = _class_means(early.features("3"), early.predictions)
    assert by_prediction["classes"] == np.unique(early.predictions).tolist()
    np.testing.assert_allclose(np.asarray(by_prediction["means"], dtype=float), means, rtol=1e-12)


def test_class_means_of_a_convolution_are_per_channel_and_capped(
    api: httpx.Client, gallery_runs: GalleryRuns
) -> None:
    run_id = gallery_runs.cnn
    response = api.get(f"/runs/{run_id}/plots/class-means.json",
                       params={"layer": "0", "max_units": 5})  # fmt: skip
    assert response.headers[DOWNSAMPLED] == "true"
    data = response.json()
    probe = StoredProbe(api, run_id, 100)
    channels = probe.features("0").mean(axis=(2, 3))  # (200, 8)
    means, similarity = _class_means(channels, probe.labels)
    units = (data["unit_kind"], data["units"], data["total_units"])
    assert units == ("channel", list(range(5)), 8)
    np.testing.assert_allclose(np.asarray(data["means"], dtype=float), means[:, :5], rtol=1e-9)
    np.testing.assert_allclose(np.asarray(data["similarity"], dtype=float), similarity,
                               rtol=1e-9, atol=1e-12)  # fmt: skip
    assert data["notes"] == ["the first 5 of 8 channels are drawn"]
    png = api.get(f"/runs/{run_id}/plots/class-means.png", params={"layer": "0"})
    assert png.headers[DOWNSAMPLED] == "false"
    assert_drawn(png.content)


# -- confusion --------------------------------------------------------------------------


def test_confusion_counts_and_accuracies(api: httpx.Client, gallery_runs: GalleryRuns) -> None:
    run_id = gallery_runs.cnn
    data = view(api, run_id, "confusion", step=50)
    probe = StoredProbe(api, run_id, 50)
    classes = np.union1d(probe.labels, probe.predictions)
    counts = np.zeros((len(classes), len(classes)), dtype=int)
    for label, prediction in zip(probe.labels, probe.predictions, strict=True):
        counts[np.searchsorted(classes, label), np.searchsorted(classes, prediction)] += 1
    assert data["classes"] == classes.tolist()
    assert data["counts"] == counts.tolist()
    assert data["matrix"] == counts.astype(float).tolist()
    assert data["support"] == counts.sum(axis=1).tolist()
    assert data["accuracy"] == pytest.approx(float((probe.labels == probe.predictions).mean()))
    recall = [float(counts[i, i] / counts[i].sum()) for i in range(len(classes))]
    assert data["per_class_accuracy"] == pytest.approx(recall)
    assert f"{data['accuracy']:.1%}" in data["title"]

    rows = np.asarray(view(api, run_id, "confusion", step=50, normalize="true")["matrix"])
    np.testing.assert_allclose(rows.sum(axis=1), 1.0)
    np.testing.assert_allclose(rows, counts / counts.sum(axis=1, keepdims=True))
    columns = np.asarray(view(api, run_id, "confusion", normalize="pred")["matrix"])
    latest = StoredProbe(api, run_id, 100)
    predicted = set(latest.predictions.tolist())
    latest_classes = view(api, run_id, "confusion")["classes"]
    for index, value in enumerate(latest_classes):
        expected = 1.0 if value in predicted else 0.0  # a class never predicted: an empty column
        assert columns[:, index].sum() == pytest.approx(expected)
    assert_drawn(api.get(f"/runs/{run_id}/plots/confusion.png",
                         params={"normalize": "true"}).content)  # fmt: skip


# -- missing data and bad parameters ------------------------------------------------------


def test_missing_labels(api: httpx.Client, tiny_run: str) -> None:
    step = api.get(f"/runs/{tiny_run}/probes").json()["data"][-1]["step"]
    data = view(api, tiny_run, "confusion")
    assert data["notes"] == [f"the probe at step {step} has no labels"]
    assert_drawn(api.get(f"/runs/{tiny_run}/plots/confusion.png").content)
    named = api.get(f"/runs/{tiny_run}/plots/confusion.json", params={"step": step})
    assert named.status_code == 404
    assert "no labels" in named.json()["detail"]
    by_label = api.get(f"/runs/{tiny_run}/plots/class-means.json", params={"by": "label"})
    assert by_label.status_code == 404
    assert "`by`" in by_label.json()["detail"]
    assert view(api, tiny_run, "class-means")["by"] == "prediction"


@pytest.mark.parametrize("name", VIEWS)
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


def test_a_grid_takes_no_step(api: httpx.Client, gallery_runs: GalleryRuns) -> None:
    response = api.get(f"/runs/{gallery_runs.mlp}/plots/scatter.json",
                       params={"grid": True, "step": 25})  # fmt: skip
    assert response.status_code == 422
    assert "`step`" in response.json()["detail"]


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
