"""Series over HTTP: pages, downsampling, and 404s naming what is missing."""

from __future__ import annotations

import httpx
from batches import create_run, make_batch, new_id, post_batch, sample_batch, stats_block


def test_paging_and_downsampling_over_http(api: httpx.Client) -> None:
    run_id = create_run(api)
    steps = list(range(100))
    post_batch(api, run_id, make_batch(stats=[stats_block("fc1", steps)])).raise_for_status()
    url = f"/runs/{run_id}/series"

    first = api.get(url, params={"tensor": "fc1", "limit": 60}).json()
    assert (len(first["steps"]), first["next_after_step"]) == (60, 59)
    rest = api.get(url, params={"tensor": "fc1", "limit": 60, "after_step": 59}).json()
    assert (rest["steps"], rest["next_after_step"]) == (steps[60:], None)

    thin = api.get(url, params={"tensor": "fc1", "max_points": 10}).json()
    assert thin["downsampled"] is True
    assert thin["total"] == 100
    assert len(thin["steps"]) <= 10
    assert (thin["steps"][0], thin["steps"][-1]) == (0, 99)


def test_unknown_runs_and_tensors_are_404(api: httpx.Client) -> None:
    missing = new_id("r")
    for path in (
        f"/runs/{missing}",
        f"/runs/{missing}/tensors",
        f"/runs/{missing}/scalars",
        f"/runs/{missing}/series?tensor=fc1",
        f"/runs/{missing}/histograms?tensor=fc1",
        f"/runs/{missing}/scalars/series?name=loss",
    ):
        response = api.get(path)
        assert response.status_code == 404, path
        assert missing in response.json()["detail"]
    assert post_batch(api, missing, sample_batch()).status_code == 404

    run_id = create_run(api)
    post_batch(api, run_id, sample_batch()).raise_for_status()
    for path, name in (
        (f"/runs/{run_id}/series?tensor=fc9", "fc9"),
        (f"/runs/{run_id}/series?tensor=fc1&kind=grad", "fc1"),
        (f"/runs/{run_id}/histograms?tensor=fc9", "fc9"),
        (f"/runs/{run_id}/scalars/series?name=acc", "acc"),
    ):
        response = api.get(path)
        assert response.status_code == 404, path
        assert name in response.json()["detail"]
