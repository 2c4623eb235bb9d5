"""Runs over HTTP: create, resume, finish, and list by project, status and tag."""

from __future__ import annotations

import httpx
from batches import create_run, new_id

from layerwatch_server.schemas import RunPublic


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
