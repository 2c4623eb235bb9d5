"""The HTTP API of a real server, over TCP, on SQLite and PostgreSQL."""

from __future__ import annotations

import gzip
import math

import httpx
from batches import body, histogram, make_batch, new_id, sample_batch, scalars_block, stats_block

from layerwatch import wire
from layerwatch_server.schemas import (
    HistogramsPublic,
    RunPublic,
    ScalarSeriesPublic,
    SeriesPublic,
)


def create_run(api: httpx.Client, **spec: object) -> str:
    spec.setdefault("id", new_id("r"))
    spec.setdefault("project", new_id("p"))
    response = api.post("/runs", json=spec)
    assert response.status_code == 201, response.text
    run_id: str = response.json()["id"]
    return run_id


def post_batch(
    api: httpx.Client, run_id: str, batch: wire.Batch, **kwargs: object
) -> httpx.Response:
    return api.post(
        f"/runs/{run_id}/batches",
        content=body(batch),
        headers={"Content-Type": "application/json"},
        **kwargs,  # type: ignore[arg-type]
    )


# -- service ---------------------------------------------------------------------------


def test_health_and_readiness(live_server: str, backend: str) -> None:
    with httpx.Client(base_url=live_server) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        ready = http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {
            "status": "ok",
            "database": "sqlite" if backend == "sqlite" else "postgresql",
        }


def test_docs_and_openapi_render(live_server: str) -> None:
    with httpx.Client(base_url=live_server) as http:
        docs = http.get("/docs")
        assert docs.status_code == 200
        assert "text/html" in docs.headers["content-type"]
        assert "swagger" in docs.text.lower()
        spec = http.get("/openapi.json").raise_for_status().json()
    assert spec["info"]["title"] == "layerwatch"
    ingest = spec["paths"]["/api/v1/runs/{run_id}/batches"]["post"]
    schema = ingest["requestBody"]["content"]["application/json"]["schema"]
    assert "batch_id" in schema["properties"]
    assert {"/api/v1/runs", "/api/v1/runs/{run_id}/plots/series.png"} <= set(spec["paths"])


# -- runs ------------------------------------------------------------------------------


def test_create_resume_and_finish_a_run(api: httpx.Client) -> None:
    spec = {"id": new_id("r"), "project": new_id("p"), "name": "baseline", "config": {"lr": 0.1}}

    created = api.post("/runs", json=spec)
    assert created.status_code == 201
    run = RunPublic.model_validate_json(created.content)
    assert (run.id, run.name, run.status, run.config) == (
        spec["id"],
        "baseline",
        "running",
        {"lr": 0.1},
    )

    patched = api.patch(f"/runs/{run.id}", json={"status": "finished"})
    assert patched.status_code == 200
    assert patched.json()["status"] == "finished"
    assert patched.json()["finished_at"] is not None
    assert api.get(f"/runs/{run.id}").json()["status"] == "finished"

    resumed = api.post("/runs", json=spec)
    assert resumed.status_code == 200
    assert resumed.json()["status"] == "running"
    assert resumed.json()["started_at"] == created.json()["started_at"]

    moved = api.post("/runs", json={**spec, "project": new_id("p")})
    assert moved.status_code == 409
    assert spec["project"] in moved.json()["detail"]


def test_patch_refuses_unknown_runs_and_statuses(api: httpx.Client) -> None:
    assert api.patch("/runs/nope", json={"status": "finished"}).status_code == 404
    run_id = create_run(api)
    bad = api.patch(f"/runs/{run_id}", json={"status": "paused"})
    assert bad.status_code == 422
    assert "status" in bad.text


def test_list_projects_and_runs(api: httpx.Client) -> None:
    project, tag = new_id("p"), new_id("tag")
    ids = [create_run(api, project=project, tags=[tag] if i else []) for i in range(3)]
    api.patch(f"/runs/{ids[1]}", json={"status": "crashed"}).raise_for_status()

    projects = {p["name"]: p for p in api.get("/projects").json()["data"]}
    assert projects[project]["runs"] == 3

    runs = api.get("/runs", params={"project": project}).json()
    assert ([r["id"] for r in runs["data"]], runs["count"]) == (ids[::-1], 3)
    assert api.get(f"/projects/{project}/runs").json()["data"] == runs["data"]
    crashed = api.get("/runs", params={"project": project, "status": "crashed"}).json()
    assert [r["id"] for r in crashed["data"]] == [ids[1]]
    tagged = api.get("/runs", params={"tag": tag}).json()
    assert sorted(r["id"] for r in tagged["data"]) == sorted(ids[1:])
    page = api.get(f"/projects/{project}/runs", params={"offset": 1, "limit": 1}).json()
    assert ([r["id"] for r in page["data"]], page["count"]) == ([ids[1]], 3)

    assert api.get("/runs", params={"project": new_id("p")}).status_code == 404
    assert api.get(f"/projects/{new_id('p')}/runs").status_code == 404


# -- ingest and query ------------------------------------------------------------------


def test_ingest_then_query_everything(api: httpx.Client) -> None:
    run_id = create_run(api)
    batch = sample_batch(steps=(0, 5, 10))
    extra = make_batch(
        histograms=[histogram("fc1", 5, [3, 2**40], edges=[0.0, 0.25, 4.0])],
        scalars=[scalars_block("acc", [0, 5], [0.5, 0.75], times=[1.5, 2.5])],
    )

    receipt = post_batch(api, run_id, batch)
    assert receipt.status_code == 200
    assert receipt.json() == {
        "batch_id": batch.batch_id,
        "duplicate": False,
        "stats": 6,
        "histograms": 1,
        "scalars": 3,
        "unit_means": 3,
        "weight_changes": 3,
        "models": 1,
    }
    post_batch(api, run_id, extra).raise_for_status()

    tensors = api.get(f"/runs/{run_id}/tensors").json()
    assert [(t["name"], t["kind"]) for t in tensors["data"]] == [
        ("fc1", "activation"),
        ("fc1.weight", "weight"),
    ]
    assert tensors["data"][0]["module_type"] == "Linear"
    assert tensors["data"][0]["shape"] == [8, 16]
    weights = api.get(f"/runs/{run_id}/tensors", params={"kind": "weight"}).json()
    assert weights["count"] == 1

    series = api.get(f"/runs/{run_id}/series", params={"tensor": "fc1", "stat": "std"})
    parsed = SeriesPublic.model_validate_json(series.content)
    assert (parsed.steps, parsed.values) == ([0, 5, 10], stats_block("fc1", [0, 5, 10])["std"])
    weight = api.get(
        f"/runs/{run_id}/series", params={"tensor": "fc1.weight", "kind": "weight", "stat": "l2"}
    ).json()
    assert weight["steps"] == [0, 5, 10]

    hists = HistogramsPublic.model_validate_json(
        api.get(f"/runs/{run_id}/histograms", params={"tensor": "fc1"}).content
    )
    assert [(h.step, h.edges, h.counts) for h in hists.data] == [
        (0, [-1.0, -0.5, 0.0, 0.5, 1.0], [1, 2, 3, 4]),
        (5, [0.0, 0.25, 4.0], [3, 2**40]),
    ]
    one = api.get(f"/runs/{run_id}/histograms", params={"tensor": "fc1", "step": 5}).json()
    assert [h["step"] for h in one["data"]] == [5]

    assert api.get(f"/runs/{run_id}/scalars").json() == {"data": ["acc", "loss"], "count": 2}
    acc = ScalarSeriesPublic.model_validate_json(
        api.get(f"/runs/{run_id}/scalars/series", params={"name": "acc"}).content
    )
    assert (acc.steps, acc.values, acc.times) == ([0, 5], [0.5, 0.75], [1.5, 2.5])

    means = api.get(f"/runs/{run_id}/unit-means", params={"tensor": "fc1", "start": 5}).json()
    assert (means["steps"], means["units"]) == ([5, 10], 4)
    assert means["values"][0] == [5.0, 5.25, 5.5, 5.75]
    changes = api.get(f"/runs/{run_id}/weight-changes", params={"tensor": "fc1.weight"}).json()
    assert changes["steps"] == [0, 5, 10]
    assert changes["since_prev"][0] == "NaN"  # no previous capture at the first
    assert changes["since_init"] == [0.0, 0.05, 0.1]
    [tree] = api.get(f"/runs/{run_id}/model").json()["data"]
    assert [m["path"] for m in tree["modules"]] == ["", "fc1", "act"]
    assert api.get(f"/runs/{run_id}/unit-means", params={"tensor": "nope"}).status_code == 404
    assert api.get("/runs/nope/model").status_code == 404


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


def test_replayed_batch_is_answered_as_a_duplicate(api: httpx.Client) -> None:
    run_id = create_run(api)
    batch = sample_batch()
    post_batch(api, run_id, batch).raise_for_status()

    again = post_batch(api, run_id, batch)

    assert again.status_code == 200
    assert again.json()["duplicate"] is True
    steps = api.get(f"/runs/{run_id}/series", params={"tensor": "fc1"}).json()["steps"]
    assert steps == [0, 1, 2]

    changed = make_batch(batch_id=batch.batch_id, stats=[stats_block("fc1", [7])])
    conflict = post_batch(api, run_id, changed)
    assert conflict.status_code == 409
    assert batch.batch_id in conflict.json()["detail"]


def test_contradicting_stored_history_is_a_conflict(api: httpx.Client) -> None:
    run_id = create_run(api)
    post_batch(api, run_id, make_batch(stats=[stats_block("fc1", [0, 1])])).raise_for_status()
    bad = make_batch(stats=[stats_block("fc2", [0]), stats_block("fc1", [1], mean=[99.0])])

    response = post_batch(api, run_id, bad)

    assert response.status_code == 409
    assert "fc1" in response.json()["detail"]
    assert "step 1" in response.json()["detail"]
    names = [t["name"] for t in api.get(f"/runs/{run_id}/tensors").json()["data"]]
    assert names == ["fc1"]


def test_non_finite_values_travel_as_strings(api: httpx.Client) -> None:
    run_id = create_run(api)
    odd = [math.nan, math.inf, -math.inf, 1.5]
    batch = make_batch(
        stats=[stats_block("fc1", range(4), mean=odd)],
        scalars=[scalars_block("loss", range(4), odd)],
    )
    sent = body(batch)
    assert b'"NaN"' in sent  # the client writes them as strings too
    post_batch(api, run_id, batch).raise_for_status()

    series = api.get(f"/runs/{run_id}/series", params={"tensor": "fc1"})
    assert series.json()["values"] == ["NaN", "Infinity", "-Infinity", 1.5]
    values = SeriesPublic.model_validate_json(series.content).values
    assert math.isnan(values[0])
    assert values[1:] == [math.inf, -math.inf, 1.5]

    loss = api.get(f"/runs/{run_id}/scalars/series", params={"name": "loss"})
    assert loss.json()["values"] == ["NaN", "Infinity", "-Infinity", 1.5]
    assert ScalarSeriesPublic.model_validate_json(loss.content).values[1] == math.inf


def test_bare_non_finite_literals_are_accepted_too(api: httpx.Client) -> None:
    run_id = create_run(api)
    raw = body(make_batch(scalars=[scalars_block("loss", [0, 1, 2], [0.0, 0.0, 0.0])]))
    raw = raw.replace(b"[0.0,0.0,0.0]", b"[NaN,Infinity,-Infinity]")

    api.post(f"/runs/{run_id}/batches", content=raw).raise_for_status()

    loss = api.get(f"/runs/{run_id}/scalars/series", params={"name": "loss"}).json()
    assert loss["values"] == ["NaN", "Infinity", "-Infinity"]


def test_gzip_bodies(api: httpx.Client) -> None:
    run_id = create_run(api)
    batch = sample_batch(steps=tuple(range(200)))

    response = api.post(
        f"/runs/{run_id}/batches",
        content=gzip.compress(body(batch)),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )

    assert response.status_code == 200, response.text
    assert response.json()["stats"] == 400
    # The digest is of the decompressed body: the same batch sent plain is a replay.
    assert post_batch(api, run_id, batch).json()["duplicate"] is True


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
