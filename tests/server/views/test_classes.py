"""The `class-means` and `confusion` views, checked against NumPy on the stored probe."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from gallery import GalleryRuns
from images import DOWNSAMPLED, assert_drawn, view
from stored_probes import StoredProbe


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
