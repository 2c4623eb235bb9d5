"""Crashed runs: a running run whose process falls silent for the run timeout reads
`crashed`, in listings and filters too, and `running` again once it speaks."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import httpx
import pytest
from batches import body, make_batch, new_id, scalars_block

from auth_headers import auth_headers
from layerwatch_server.config import Settings

TIMEOUT = 1.2  # seconds of silence before a run reads crashed (notes are 1 s apart at most)


@pytest.fixture
def quick(
    database_url: str, serve: Callable[[Settings], AbstractContextManager[str]]
) -> Iterator[httpx.Client]:
    """A server on the shared database with a short run timeout."""
    settings = Settings(database_url=database_url, run_timeout_seconds=TIMEOUT)
    with (
        serve(settings) as url,
        httpx.Client(headers=auth_headers(), base_url=f"{url}/api/v1", timeout=10) as client,
    ):
        yield client


def _status(client: httpx.Client, run_id: str) -> str:
    status: str = client.get(f"/runs/{run_id}").json()["status"]
    return status


def _listed(client: httpx.Client, project: str, status: str) -> list[str]:
    page = client.get("/runs", params={"project": project, "status": status}).json()
    return [run["id"] for run in page["data"]]


def test_a_silent_run_reads_crashed_until_it_speaks_again(quick: httpx.Client) -> None:
    project, run_id = new_id("p"), new_id("r")
    created = quick.post("/runs", json={"id": run_id, "project": project})
    assert created.status_code == 201
    assert created.json()["last_seen_at"] is not None
    assert _status(quick, run_id) == "running"
    assert _listed(quick, project, "running") == [run_id]

    time.sleep(TIMEOUT + 0.3)  # the process died: nothing more arrives
    crashed = quick.get(f"/runs/{run_id}").json()
    assert crashed["status"] == "crashed"
    assert crashed["last_seen_at"] == created.json()["last_seen_at"]
    assert _listed(quick, project, "crashed") == [run_id]
    assert _listed(quick, project, "running") == []

    beat = quick.post(f"/runs/{run_id}/heartbeat")  # the same run resumes
    assert beat.status_code == 204
    assert beat.content == b""
    assert _status(quick, run_id) == "running"
    assert _listed(quick, project, "running") == [run_id]
    assert _listed(quick, project, "crashed") == []


def test_data_is_a_sign_of_life_too(quick: httpx.Client) -> None:
    project, run_id = new_id("p"), new_id("r")
    quick.post("/runs", json={"id": run_id, "project": project})
    time.sleep(TIMEOUT + 0.3)
    assert _status(quick, run_id) == "crashed"
    batch = make_batch(scalars=[scalars_block("loss", [0], [1.0])])
    sent = quick.post(f"/runs/{run_id}/batches", content=body(batch),
                      headers={"Content-Type": "application/json"})  # fmt: skip
    assert sent.status_code == 200
    assert _status(quick, run_id) == "running"


def test_finished_and_failed_runs_never_read_crashed(quick: httpx.Client) -> None:
    project = new_id("p")
    ids = {status: new_id("r") for status in ("finished", "failed")}
    for status, run_id in ids.items():
        quick.post("/runs", json={"id": run_id, "project": project})
        quick.patch(f"/runs/{run_id}", json={"status": status})
    time.sleep(TIMEOUT + 0.3)
    for status, run_id in ids.items():
        assert _status(quick, run_id) == status
    assert _listed(quick, project, "crashed") == []


def test_a_run_marked_crashed_by_its_client_is_listed_as_crashed(quick: httpx.Client) -> None:
    project, run_id = new_id("p"), new_id("r")
    quick.post("/runs", json={"id": run_id, "project": project})
    quick.patch(f"/runs/{run_id}", json={"status": "crashed"})
    assert _listed(quick, project, "crashed") == [run_id]


def test_heartbeats_for_unknown_runs_are_404(quick: httpx.Client) -> None:
    missing = quick.post(f"/runs/{new_id('r')}/heartbeat")
    assert missing.status_code == 404
    assert missing.json()["code"] == "run_not_found"


def test_the_default_timeout_is_minutes(api: httpx.Client) -> None:
    assert Settings().run_timeout_seconds == 300
    project, run_id = new_id("p"), new_id("r")
    api.post("/runs", json={"id": run_id, "project": project})
    time.sleep(0.5)
    assert api.get(f"/runs/{run_id}").json()["status"] == "running"
