"""The `histogram` view: histograms of one tensor at chosen steps, and across runs."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from gallery import GalleryRuns
from images import DOWNSAMPLED, assert_drawn, assert_error, floats, view


def test_histogram_before_and_after_training(api: httpx.Client, gallery_runs: GalleryRuns) -> None:
    run_id = gallery_runs.mlp
    data = view(api, run_id, "histogram")
    assert (data["tensor"], data["kind"], data["density"]) == ("0.weight", "weight", True)
    assert [c["step"] for c in data["curves"]] == [0, 95]
    assert [c["label"] for c in data["curves"]] == ["step 0", "step 95"]
    for curve in data["curves"]:
        query = {"tensor": "0.weight", "kind": "weight", "step": curve["step"]}
        [stored] = api.get(f"/runs/{run_id}/histograms", params=query).json()["data"]
        edges, counts = floats(stored["edges"]), floats(stored["counts"])
        assert curve["edges"] == pytest.approx(list(edges))
        np.testing.assert_allclose(curve["values"], counts / counts.sum() / np.diff(edges))
        assert float(np.sum(floats(curve["values"]) * np.diff(edges))) == pytest.approx(1.0)
        assert curve["count"] == counts.sum() == 32 * 64
    counts = view(api, run_id, "histogram", density=False, step=50)
    [curve] = counts["curves"]
    assert curve["step"] == 50
    assert sum(curve["values"]) == 32 * 64


def test_histogram_across_runs(api: httpx.Client, gallery_runs: GalleryRuns) -> None:
    mlp, cnn = gallery_runs.mlp, gallery_runs.cnn
    data = view(api, mlp, "histogram", compare=cnn)
    assert [(c["run_id"], c["step"]) for c in data["curves"]] == [(mlp, 0), (mlp, 95), (cnn, 95)]
    assert data["curves"][2]["label"] == f"{cnn}: step 95"
    assert data["curves"][2]["count"] == 8 * 9  # the conv's weight
    steps = view(api, mlp, "histogram", compare=cnn, step=[10, 12])
    assert [(c["run_id"], c["step"]) for c in steps["curves"]] == [(mlp, 10), (cnn, 10)]
    assert any("no histogram at step 12" in note and "10, 15" in note for note in steps["notes"])
    png = api.get(f"/runs/{mlp}/plots/histogram.png", params={"compare": cnn})
    assert png.headers[DOWNSAMPLED] == "false"
    assert_drawn(png.content)


def test_histogram_samples_and_constants(api: httpx.Client, crafted: str) -> None:
    data = view(api, crafted, "histogram", kind="activation", tensor="h", step=[0, 5, 7])
    assert [c["step"] for c in data["curves"]] == [0, 7]  # 5 is empty
    assert data["curves"][0]["label"] == "step 0 (sampled from 500)"
    assert any("step 5 skipped" in note for note in data["notes"])
    constant = data["curves"][1]
    assert len(constant["values"]) == 1
    assert constant["edges"][0] < 0.25 < constant["edges"][1]
    assert constant["values"][0] * np.diff(constant["edges"])[0] == pytest.approx(1.0)
    png = api.get(f"/runs/{crafted}/plots/histogram.png",
                  params={"kind": "activation", "tensor": "h", "step": [0, 7]})  # fmt: skip
    assert_drawn(png.content)


def test_histogram_refuses_nonsense(api: httpx.Client, gallery_runs: GalleryRuns) -> None:
    url = f"/runs/{gallery_runs.mlp}/plots/histogram"
    assert_error(api.get(f"{url}.json", params={"tensor": "nope"}), 404, "nope")
    assert_error(api.get(f"{url}.json", params={"compare": "no-such-run"}), 404, "no-such-run")
    assert_error(api.get(f"{url}.png", params={"step": list(range(17))}), 422, "step")
    assert_error(api.get(f"{url}.json", params={"step": -1}), 422, "step")
    # the cnn has no `2.weight`: a compared run without the tensor is named
    other = {"tensor": "2.weight", "compare": gallery_runs.cnn}
    assert_error(api.get(f"{url}.json", params=other), 404, "2.weight")
