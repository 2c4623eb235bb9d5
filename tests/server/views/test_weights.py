"""The `weight-change` view, checked against the stored changes (``/weight-changes``)."""

from __future__ import annotations

import httpx
import numpy as np
from gallery import GalleryRuns
from images import DOWNSAMPLED, assert_drawn, assert_error, floats, view


def test_weight_change_matches_the_stored_changes(
    api: httpx.Client, gallery_runs: GalleryRuns
) -> None:
    run_id = gallery_runs.mlp
    data = view(api, run_id, "weight-change")
    assert data["layers"] == ["0.weight", "2.weight", "4.weight"]
    assert data["steps"] == list(range(0, 100, 5))
    assert [p["metric"] for p in data["panels"]] == ["since_prev", "update_ratio", "since_init"]
    assert [p["reference"] for p in data["panels"]] == [None, 1e-3, None]
    for i, layer in enumerate(data["layers"]):
        stored = api.get(f"/runs/{run_id}/weight-changes", params={"tensor": layer}).json()
        for panel in data["panels"]:
            np.testing.assert_array_equal(
                floats(panel["values"][i]), floats(stored[panel["metric"]])
            )
    # NaN since the previous capture at the first capture is expected, not a problem
    assert not any("non-finite" in note for note in data["notes"])
    assert any("bias" in note for note in data["notes"])
    one = view(api, run_id, "weight-change", metric="update_ratio", tensor=["4.bias", "0.weight"])
    assert (one["layers"], [p["metric"] for p in one["panels"]]) == (
        ["4.bias", "0.weight"], ["update_ratio"])  # fmt: skip
    thin = api.get(f"/runs/{run_id}/plots/weight-change.png", params={"max_steps": 4})
    assert thin.headers[DOWNSAMPLED] == "true"
    assert_drawn(thin.content)


def test_weight_change_notes_real_problems(api: httpx.Client, crafted: str) -> None:
    data = view(api, crafted, "weight-change")
    assert data["layers"] == ["w.weight"]
    since_init = data["panels"][2]
    assert since_init["values"][0] == [0.0, 0.01, "Infinity", 0.03]
    notes = " ".join(data["notes"])
    assert "since_init: 1 non-finite" in notes
    assert "since_prev" not in notes  # its NaN is at the first capture
    assert "zero or negative" not in notes  # since_init is 0 at the first capture by definition
    assert_drawn(api.get(f"/runs/{crafted}/plots/weight-change.png").content)


def test_weight_change_refuses_nonsense(api: httpx.Client, gallery_runs: GalleryRuns) -> None:
    url = f"/runs/{gallery_runs.mlp}/plots/weight-change"
    assert_error(api.get(f"{url}.json", params={"tensor": "0"}), 404, "`0`")  # an activation
    assert_error(api.get(f"{url}.json", params={"metric": "since_ever"}), 422, "metric")
    assert_error(api.get(f"{url}.png", params={"start": 9, "end": 3}), 422, "start")
