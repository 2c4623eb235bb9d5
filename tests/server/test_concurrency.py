"""Several writers at once, and a database too busy to answer."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest
from batches import body, count_rows, make_batch, new_id, sample_batch, stats_block
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from auth_headers import auth_headers
from layerwatch_server.config import Settings

WRITERS = 4


def at_once(
    live_server: str, requests: list[Callable[[httpx.Client], httpx.Response]]
) -> list[httpx.Response]:
    """Send ``requests`` from as many threads, each on its own connection, released together."""
    start = threading.Barrier(len(requests))

    def send(request: Callable[[httpx.Client], httpx.Response]) -> httpx.Response:
        with httpx.Client(
            headers=auth_headers(), base_url=f"{live_server}/api/v1", timeout=30, verify=False
        ) as client:
            client.get("/runs", params={"limit": 1})  # connect before the barrier
            start.wait(timeout=10)
            return request(client)

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(send, requests))


def test_the_same_batch_sent_at_once_is_stored_once(
    live_server: str, api: httpx.Client, engine: Engine
) -> None:
    run_id = new_id("r")
    api.post("/runs", json={"id": run_id}).raise_for_status()
    for first in (0, 100, 200):
        content = body(sample_batch(steps=tuple(range(first, first + 50))))

        def post(client: httpx.Client, content: bytes = content) -> httpx.Response:
            return client.post(f"/runs/{run_id}/batches", content=content)

        responses = at_once(live_server, [post] * WRITERS)

        assert [r.status_code for r in responses] == [200] * WRITERS, [r.text for r in responses]
        assert sorted(r.json()["duplicate"] for r in responses) == [False] + [True] * (WRITERS - 1)
        assert len({(r.json()["stats"], r.json()["scalars"]) for r in responses}) == 1

    with Session(engine) as session:
        assert count_rows(session, run_id) == {
            "tensors": 2,
            "stats": 300,
            "histograms": 3,
            "scalars": 150,
            "unit_means": 150,
            "weight_changes": 150,
            "modules": 3,  # one tree, sent with every batch, stored once
            "batches": 3,
        }


def test_different_batches_creating_the_same_tensors_at_once(
    live_server: str, api: httpx.Client, engine: Engine
) -> None:
    run_id = new_id("r")
    api.post("/runs", json={"id": run_id}).raise_for_status()
    names = [f"layer{i}" for i in range(20)]

    def post(writer: int) -> Callable[[httpx.Client], httpx.Response]:
        steps = range(writer * 10, writer * 10 + 10)
        batch = make_batch(stats=[stats_block(name, steps) for name in names])
        return lambda client: client.post(f"/runs/{run_id}/batches", content=body(batch))

    responses = at_once(live_server, [post(writer) for writer in range(WRITERS)])

    assert [r.status_code for r in responses] == [200] * WRITERS, [r.text for r in responses]
    with Session(engine) as session:
        rows = count_rows(session, run_id)
    assert (rows["tensors"], rows["stats"]) == (len(names), len(names) * 10 * WRITERS)
    tensors = api.get(f"/runs/{run_id}/tensors").json()["data"]
    assert sorted(t["name"] for t in tensors) == sorted(names)


def test_the_same_new_run_created_at_once(live_server: str, api: httpx.Client) -> None:
    run_id, project = new_id("r"), new_id("p")
    create = lambda client: client.post("/runs", json={"id": run_id, "project": project})  # noqa: E731

    responses = at_once(live_server, [create] * WRITERS)

    assert sorted(r.status_code for r in responses) == [200] * (WRITERS - 1) + [201]
    assert {r.json()["id"] for r in responses} == {run_id}
    projects = [p for p in api.get("/projects").json()["data"] if p["name"] == project]
    assert [p["runs"] for p in projects] == [1]


# -- a busy database -------------------------------------------------------------------


@pytest.fixture
def busy_sqlite(
    tmp_path: Path, serve: Callable[[Settings], AbstractContextManager[str]]
) -> Iterator[tuple[httpx.Client, Path]]:
    """A server on its own SQLite file that waits only 50 ms for the write lock."""
    path = tmp_path / "busy.db"
    settings = Settings(
        database_url=f"sqlite:///{path}", sqlite_busy_timeout_ms=50, retry_after_seconds=7,
        allow_open=True,  # no token in this database: about locks, not authentication
    )  # fmt: skip
    with (
        serve(settings) as url,
        httpx.Client(headers=auth_headers(), base_url=f"{url}/api/v1", timeout=10) as client,
    ):
        yield client, path


@pytest.fixture
def write_lock() -> Iterator[Callable[[Path], sqlite3.Connection]]:
    """Takes SQLite's write lock on a file from another connection; released at teardown."""
    connections: list[sqlite3.Connection] = []

    def lock(path: Path) -> sqlite3.Connection:
        connection = sqlite3.connect(path, isolation_level=None)
        connections.append(connection)
        connection.execute("BEGIN IMMEDIATE")  # holds SQLite's one write lock
        return connection

    yield lock
    for connection in connections:
        connection.close()


def test_a_locked_sqlite_database_answers_503_with_retry_after(
    busy_sqlite: tuple[httpx.Client, Path], write_lock: Callable[[Path], sqlite3.Connection]
) -> None:
    api, path = busy_sqlite
    run_id = new_id("r")
    api.post("/runs", json={"id": run_id}).raise_for_status()
    batch = sample_batch()

    holder = write_lock(path)
    busy = api.post(f"/runs/{run_id}/batches", content=body(batch))
    also_busy = api.post("/runs", json={"id": new_id("r")})
    still_readable = api.get(f"/runs/{run_id}")  # WAL: readers do not wait for the writer
    holder.execute("ROLLBACK")

    assert busy.status_code == 503, busy.text
    assert busy.headers["Retry-After"] == "7"
    assert "retry" in busy.json()["detail"]
    assert busy.json()["code"] == "unavailable"
    assert also_busy.status_code == 503
    assert still_readable.status_code == 200
    assert api.get(f"/runs/{run_id}/tensors").json()["count"] == 0

    retried = api.post(f"/runs/{run_id}/batches", content=body(batch))
    assert retried.status_code == 200, retried.text
    assert retried.json()["duplicate"] is False
