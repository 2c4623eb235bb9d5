"""The `model` view, checked against ``GET /runs/{id}/model``."""

from __future__ import annotations

import httpx
import pytest
from gallery import GalleryRuns
from images import assert_drawn, png, view


@pytest.mark.parametrize("run", ["mlp", "cnn"])
def test_model_table_matches_the_stored_tree(
    api: httpx.Client, gallery_runs: GalleryRuns, run: str
) -> None:
    run_id = getattr(gallery_runs, run)
    [tree] = api.get(f"/runs/{run_id}/model").json()["data"]
    data = view(api, run_id, "model")
    assert (data["model"], data["total_params"], data["modules"]) == (
        tree["name"], tree["params"], len(tree["modules"]),
    )  # fmt: skip
    assert data["total_params"] == sum(m["params"] for m in tree["modules"])
    assert data["trainable_params"] == sum(m["trainable"] for m in tree["modules"])
    assert f"{tree['params']:,} parameters" in data["title"]
    keys = ("path", "type", "params", "trainable", "inputs", "outputs")
    assert [{k: r[k] for k in keys} for r in data["rows"]] == tree["modules"]
    assert [r["depth"] for r in data["rows"]] == [0, 1, 1, 1, 1, 1]
    capped = view(api, run_id, "model", max_rows=2)
    assert (len(capped["rows"]), capped["modules"], capped["downsampled"]) == (2, 6, True)
    assert_drawn(png(api, run_id, "model").content)
