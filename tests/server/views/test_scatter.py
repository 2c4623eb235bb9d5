"""The `scatter` view, checked against a PCA of the stored probe (scikit-learn)."""

from __future__ import annotations

import httpx
import numpy as np
from gallery import GalleryRuns
from images import DOWNSAMPLED, assert_drawn, view
from sklearn.decomposition import PCA
from stored_probes import StoredProbe, assert_same_up_to_sign


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


def test_a_grid_takes_no_step(api: httpx.Client, gallery_runs: GalleryRuns) -> None:
    response = api.get(f"/runs/{gallery_runs.mlp}/plots/scatter.json",
                       params={"grid": True, "step": 25})  # fmt: skip
    assert response.status_code == 422
    assert "`step`" in response.json()["detail"]
