"""What every view of the gallery shares: JSON twins, ETags, cache headers, downsampling."""

from __future__ import annotations

import httpx
import pytest
from batches import body, make_batch, new_id, scalars_block, stats_block

from layerwatch_server.api.answer_cache import AnswerCache, CachedAnswer
from layerwatch_server.api.routes import views as views_routes

DOWNSAMPLED = "x-layerwatch-downsampled"


@pytest.fixture
def run_id(api: httpx.Client) -> str:
    run_id = new_id("r")
    api.post("/runs", json={"id": run_id, "project": new_id("p")}).raise_for_status()
    steps = list(range(500))
    batch = make_batch(
        stats=[stats_block("fc1", steps), stats_block("fc2", steps, offset=1.0)],
        scalars=[scalars_block("loss", steps, [1 / (1 + s) for s in steps])],
    )
    api.post(f"/runs/{run_id}/batches", content=body(batch)).raise_for_status()
    return run_id


def test_the_json_twin_holds_the_plotted_numbers(api: httpx.Client, run_id: str) -> None:
    data = api.get(f"/runs/{run_id}/plots/series.json", params={"stat": "std"}).json()
    assert (data["view"], data["run_id"], data["downsampled"]) == ("series", run_id, False)
    assert [line["label"] for line in data["lines"]] == ["fc1", "fc2"]  # every activation
    assert data["lines"][0]["values"] == stats_block("fc1", range(500))["std"]

    thin = api.get(f"/runs/{run_id}/plots/series.json", params={"tensor": "fc1", "max_points": 50})
    assert thin.headers[DOWNSAMPLED] == "true"
    [line] = thin.json()["lines"]
    assert (line["total"], line["downsampled"]) == (500, True)
    assert len(line["steps"]) <= 50
    assert (line["steps"][0], line["steps"][-1]) == (0, 499)  # first and last kept
    png = api.get(f"/runs/{run_id}/plots/series.png", params={"tensor": "fc1", "max_points": 50})
    assert png.headers[DOWNSAMPLED] == "true"
    full = api.get(f"/runs/{run_id}/plots/series.png", params={"tensor": "fc1"})
    assert full.headers[DOWNSAMPLED] == "false"


def test_etags_answer_304_until_new_data_arrives(api: httpx.Client, run_id: str) -> None:
    url = f"/runs/{run_id}/plots/series.png"
    first = api.get(url, params={"tensor": "fc1"})
    etag = first.headers["etag"]
    assert first.headers["cache-control"] == "no-cache"  # a running run: revalidate
    again = api.get(url, params={"tensor": "fc1"}, headers={"If-None-Match": etag})
    assert (again.status_code, again.content) == (304, b"")
    assert again.headers["etag"] == etag
    other = api.get(url, params={"tensor": "fc2"}, headers={"If-None-Match": etag})
    assert other.status_code == 200  # other parameters, other tag
    json_twin = api.get(f"/runs/{run_id}/plots/series.json", params={"tensor": "fc1"})
    assert json_twin.headers["etag"] != etag

    more = make_batch(stats=[stats_block("fc1", [500])])
    api.post(f"/runs/{run_id}/batches", content=body(more)).raise_for_status()
    fresh = api.get(url, params={"tensor": "fc1"}, headers={"If-None-Match": etag})
    assert fresh.status_code == 200
    assert fresh.headers["etag"] != etag


def test_a_view_asked_again_without_its_etag_is_answered_from_the_server_cache(
    api: httpx.Client, run_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    renders: list[str] = []
    render_png = views_routes.render_png

    def counting(view, *args, **kwargs):  # type: ignore[no-untyped-def]
        renders.append(view.name)
        return render_png(view, *args, **kwargs)

    monkeypatch.setattr(views_routes, "render_png", counting)
    url = f"/runs/{run_id}/plots/series.png"
    first = api.get(url, params={"tensor": "fc2", "width": 555})
    second = api.get(url, params={"tensor": "fc2", "width": 555})  # another user: no ETag
    assert second.status_code == 200
    assert second.content == first.content
    assert second.headers["etag"] == first.headers["etag"]
    assert second.headers[DOWNSAMPLED] == first.headers[DOWNSAMPLED]
    assert renders == ["series"]  # drawn once

    more = make_batch(stats=[stats_block("fc2", [500])])
    api.post(f"/runs/{run_id}/batches", content=body(more)).raise_for_status()
    third = api.get(url, params={"tensor": "fc2", "width": 555})
    assert third.headers["etag"] != first.headers["etag"]
    assert renders == ["series", "series"]  # new data: drawn again


def test_the_answer_cache_is_bounded_in_bytes() -> None:
    cache = AnswerCache(max_bytes=1000)
    for i in range(10):
        cache.put(f"e{i}", CachedAnswer(b"x" * 200, "image/png", False))
    assert cache.size_bytes <= 1000
    assert len(cache) == 5
    assert cache.get("e0") is None
    assert cache.get("e9") is not None
    cache.put("huge", CachedAnswer(b"x" * 600, "image/png", False))  # over a quarter: not kept
    assert cache.get("huge") is None


def test_finished_runs_may_be_cached(api: httpx.Client, run_id: str) -> None:
    api.patch(f"/runs/{run_id}", json={"status": "finished"}).raise_for_status()
    response = api.get(f"/runs/{run_id}/plots/scalars.png")
    assert response.headers["cache-control"].startswith("public, max-age=")


def test_runs_are_overlaid(api: httpx.Client, run_id: str) -> None:
    other = new_id("r")
    api.post("/runs", json={"id": other, "project": new_id("p")}).raise_for_status()
    batch = make_batch(scalars=[scalars_block("loss", [0, 1], [3.0, 2.0])])
    api.post(f"/runs/{other}/batches", content=body(batch)).raise_for_status()
    data = api.get(f"/runs/{run_id}/plots/scalars.json", params={"compare": other}).json()
    assert [line["label"] for line in data["lines"]] == [f"{run_id}: loss", f"{other}: loss"]
    png = api.get(f"/runs/{run_id}/plots/scalars.png", params={"compare": other})
    assert png.status_code == 200

    # New data in an overlaid run changes the picture, and so its tag.
    etag = png.headers["etag"]
    more = make_batch(scalars=[scalars_block("loss", [2], [1.0])])
    api.post(f"/runs/{other}/batches", content=body(more)).raise_for_status()
    again = api.get(f"/runs/{run_id}/plots/scalars.png", params={"compare": other},
                    headers={"If-None-Match": etag})  # fmt: skip
    assert again.status_code == 200
    assert again.headers["etag"] != etag


def test_unknown_views_and_runs(api: httpx.Client, run_id: str) -> None:
    assert api.get(f"/runs/{run_id}/plots/nope.png").status_code == 404
    assert api.get("/runs/nope/plots/series.json").status_code == 404
