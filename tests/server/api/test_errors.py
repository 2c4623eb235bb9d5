"""Every error answers ``{"detail": ..., "code": ...}``; the code is a contract (``errors.py``).

Each kind of error is provoked over real HTTP: the server of the session, a
server with a small body cap, and one with extra routes that raise what no
request can provoke on purpose (a database range error, a busy database, an
unusual HTTP status).
"""

from __future__ import annotations

import base64
import gzip
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import httpx
import numpy as np
import pytest
from batches import body, new_id, sample_batch
from fastapi import HTTPException
from sqlalchemy import text
from sqlalchemy.exc import DataError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from auth_headers import auth_headers
from layerwatch_server.cli.serving import serve_in_thread
from layerwatch_server.config import Settings
from layerwatch_server.db import managed_session
from layerwatch_server.errors import http_error_code
from layerwatch_server.main import create_app


def assert_error(response: httpx.Response, status: int, code: str) -> Any:
    """Check status and code; returns the detail."""
    assert response.status_code == status, response.text
    answer = response.json()
    assert set(answer) == {"detail", "code"}, answer
    assert answer["code"] == code, answer
    return answer["detail"]


def b64(array: np.ndarray) -> str:
    return base64.b64encode(array.tobytes()).decode()


@pytest.fixture(scope="module")
def run_id(api: httpx.Client) -> str:
    """A run with a sample batch (tensor fc1, scalar loss) and a probe at step 5 (layer fc1)."""
    run_id = new_id("r")
    api.post("/runs", json={"id": run_id, "project": new_id("p")}).raise_for_status()
    api.post(f"/runs/{run_id}/batches", content=body(sample_batch())).raise_for_status()
    features = np.zeros((4, 3), dtype="<f2")
    probe = {"step": 5, "samples": 4, "layers": [
        {"name": "fc1", "features_shape": [4, 3], "features": b64(features)}]}  # fmt: skip
    api.post(f"/runs/{run_id}/probes", json=probe).raise_for_status()
    return run_id


NOT_FOUND = {
    "run": ("/runs/{missing}", "run_not_found"),
    "run of a series": ("/runs/{missing}/series?tensor=fc1", "run_not_found"),
    "run of a probe": ("/runs/{missing}/probes/5", "run_not_found"),
    "run of a view": ("/runs/{missing}/plots/series.json", "run_not_found"),
    "run of an export": ("/runs/{missing}/export.csv", "run_not_found"),
    "tensor of a series": ("/runs/{run}/series?tensor=fc9", "tensor_not_found"),
    "tensor of another kind": ("/runs/{run}/series?tensor=fc1&kind=grad", "tensor_not_found"),
    "tensor of histograms": ("/runs/{run}/histograms?tensor=fc9", "tensor_not_found"),
    "tensor of unit means": ("/runs/{run}/unit-means?tensor=fc9", "tensor_not_found"),
    "tensor of an export": ("/runs/{run}/export.csv?tensor=fc9", "tensor_not_found"),
    "tensor of a view": ("/runs/{run}/plots/histogram.json?tensor=fc9", "tensor_not_found"),
    "scalar": ("/runs/{run}/scalars/series?name=acc", "scalar_not_found"),
    "scalar of an export": ("/runs/{run}/export.csv?table=scalars&name=acc", "scalar_not_found"),
    "project": ("/projects/{missing}/runs", "project_not_found"),
    "project of a listing": ("/runs?project={missing}", "project_not_found"),
    "probe": ("/runs/{run}/probes/7", "probe_not_found"),
    "layer of a probe": ("/runs/{run}/probes/5?layer=fc9", "probe_not_found"),
    "probe of a view": ("/runs/{run}/plots/scatter.json?step=7", "probe_not_found"),
    "layer of a view": ("/runs/{run}/plots/scatter.json?layer=fc9", "probe_not_found"),
    "model of a view": ("/runs/{run}/plots/model.json?model=Nope", "not_found"),
    "view": ("/runs/{run}/plots/nope.png", "not_found"),
    "route": ("/nope", "not_found"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(NOT_FOUND))
def test_what_does_not_exist_is_404_with_its_code(
    api: httpx.Client, run_id: str, case: str
) -> None:
    path, code = NOT_FOUND[case]
    missing = new_id("x")
    response = api.get(path.format(run=run_id, missing=missing))
    detail = assert_error(response, 404, code)
    if code == "run_not_found":
        assert detail == f"run `{missing}` does not exist"


def test_posting_to_a_missing_run_is_run_not_found(api: httpx.Client) -> None:
    missing = new_id("r")
    assert_error(api.post(f"/runs/{missing}/batches", content=body(sample_batch())), 404,
                 "run_not_found")  # fmt: skip
    probe = {"step": 0, "samples": 1, "layers": []}
    assert_error(api.post(f"/runs/{missing}/probes", json=probe), 404, "run_not_found")


def test_unknown_urls_outside_the_api_are_not_found(live_server: str) -> None:
    detail = assert_error(httpx.get(f"{live_server}/nope", timeout=10), 404, "not_found")
    assert detail == "Not Found"


def test_a_method_the_url_does_not_take_is_405(api: httpx.Client, run_id: str) -> None:
    response = api.delete(f"/runs/{run_id}")
    assert_error(response, 405, "method_not_allowed")
    assert "GET" in response.headers["allow"]


def test_contradicting_stored_data_is_a_conflict(api: httpx.Client, run_id: str) -> None:
    other_project = api.post("/runs", json={"id": run_id, "project": new_id("p")})
    assert "belongs to project" in assert_error(other_project, 409, "conflict")
    changed = sample_batch(batch_id=new_id("b"))
    api.post(f"/runs/{run_id}/batches", content=body(changed)).raise_for_status()
    reused = sample_batch(batch_id=changed.batch_id, steps=(7, 8))
    assert_error(api.post(f"/runs/{run_id}/batches", content=body(reused)), 409, "conflict")


def test_an_unknown_content_encoding_is_415(api: httpx.Client, run_id: str) -> None:
    response = api.post(
        f"/runs/{run_id}/batches", content=body(sample_batch()), headers={"Content-Encoding": "br"}
    )
    assert "gzip" in assert_error(response, 415, "unsupported_encoding")


INVALID = {
    "query parameter": ("/runs?limit=0", list),
    "path parameter": ("/runs/{run}/probes/-1", list),
    "view parameter": ("/runs/{run}/plots/series.json?max_points=1", list),
    "start after end": ("/runs/{run}/export.csv?start=5&end=1", str),
    "start after end in a view": ("/runs/{run}/plots/distributions.json?start=5&end=1", list),
    "config filter": ("/runs?config=no-colon", str),
    "view parameters that do not fit": ("/runs/{run}/plots/scatter.json?grid=true&step=5", str),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_queries_are_422_invalid(api: httpx.Client, run_id: str, case: str) -> None:
    path, detail_type = INVALID[case]
    detail = assert_error(api.get(path.format(run=run_id)), 422, "invalid")
    assert isinstance(detail, detail_type)


def test_invalid_bodies_are_422_invalid(api: httpx.Client, run_id: str) -> None:
    not_a_batch = api.post(f"/runs/{run_id}/batches", json={"batch_id": "b", "stats": 3})
    assert isinstance(assert_error(not_a_batch, 422, "invalid"), list)
    not_json = api.post(f"/runs/{run_id}/batches", content=b"{")
    assert isinstance(assert_error(not_json, 422, "invalid"), list)
    bad_run = api.post("/runs", json={"project": ""})
    assert isinstance(assert_error(bad_run, 422, "invalid"), list)
    not_gzip = api.post(
        f"/runs/{run_id}/batches", content=b"plain", headers={"Content-Encoding": "gzip"}
    )
    assert "gzip" in assert_error(not_gzip, 422, "invalid")


@pytest.fixture(scope="module")
def small_api(
    database_url: str, serve: Callable[[Settings], AbstractContextManager[str]]
) -> Iterator[httpx.Client]:
    """A client of a server that takes bodies of at most 1024 bytes."""
    with (
        serve(Settings(database_url=database_url, max_body_bytes=1024)) as url,
        httpx.Client(headers=auth_headers(), base_url=f"{url}/api/v1", timeout=10) as client,
    ):
        yield client


def test_bodies_over_the_cap_are_413(small_api: httpx.Client) -> None:
    run_id = new_id("r")
    small_api.post("/runs", json={"id": run_id}).raise_for_status()
    big = body(sample_batch(steps=range(50)))
    assert len(big) > 1024
    response = small_api.post(f"/runs/{run_id}/batches", content=big)
    assert "limit" in assert_error(response, 413, "payload_too_large")
    bomb = gzip.compress(body(sample_batch()) + b" " * 100_000)
    assert len(bomb) < 1024
    response = small_api.post(
        f"/runs/{run_id}/batches", content=bomb, headers={"Content-Encoding": "gzip"}
    )
    assert "decompressed" in assert_error(response, 413, "payload_too_large")


RAISED: dict[str, Exception] = {
    "out-of-range": DataError("INSERT", {}, Exception("integer out of range")),
    "locked": OperationalError("INSERT", {}, Exception("database is locked")),
    "pool-timeout": PoolTimeoutError("QueuePool limit reached"),
    "teapot": HTTPException(418, "I'm a teapot"),
}


@pytest.fixture(scope="module")
def raising_server(database_url: str) -> Iterator[str]:
    """A server with a route that raises ``RAISED[what]`` at ``GET /raise/{what}``, and one
    that asks its database for an integer beyond 64 bits at ``GET /overflow``."""
    app = create_app(Settings(database_url=database_url, retry_after_seconds=3))

    @app.get("/raise/{what}")
    def _raise(what: str) -> None:
        raise RAISED[what]

    @app.get("/overflow")
    def _overflow() -> None:
        with managed_session(app.state.read_sessions) as session:
            session.execute(text("SELECT CAST(:big AS BIGINT)"), {"big": 2**64})

    with serve_in_thread(app) as url:
        yield url


def test_what_only_a_broken_database_raises_has_its_code(raising_server: str) -> None:
    with httpx.Client(headers=auth_headers(), base_url=raising_server, timeout=10) as client:
        out_of_range = client.get("/raise/out-of-range")
        assert "out of range" in assert_error(out_of_range, 422, "invalid")
        for what in ("locked", "pool-timeout"):
            busy = client.get(f"/raise/{what}")
            assert "retry" in assert_error(busy, 503, "unavailable")
            assert busy.headers["Retry-After"] == "3"
        teapot = client.get("/raise/teapot")
        assert assert_error(teapot, 418, "http_418") == "I'm a teapot"


def test_an_integer_too_large_for_the_database_is_invalid_on_either_driver(
    raising_server: str,
) -> None:
    # sqlite3 raises a bare OverflowError binding it, PostgreSQL a DataError casting it.
    response = httpx.get(f"{raising_server}/overflow", timeout=10)
    assert "out of range" in assert_error(response, 422, "invalid")


BOUNDED = [
    "/runs?offset={n}",
    "/projects/{project}/runs?offset={n}",
    "/runs/{run}/series?tensor=fc1&after_step={n}",
    "/runs/{run}/histograms?tensor=fc1&step={n}",
    "/runs/{run}/probes/{n}",
    "/runs/{run}/export.csv?start={n}",
]


@pytest.mark.parametrize("path", BOUNDED)
def test_integers_are_bounded_by_the_database_range(
    api: httpx.Client, run_id: str, path: str
) -> None:
    project = api.get(f"/runs/{run_id}").json()["project"]
    largest = path.format(n=2**63 - 1, run=run_id, project=project)
    assert api.get(largest).status_code in (200, 404), api.get(largest).text
    beyond = api.get(path.format(n=2**63, run=run_id, project=project))
    assert isinstance(assert_error(beyond, 422, "invalid"), list)


def test_codes_of_framework_errors() -> None:
    assert http_error_code(404) == "not_found"
    assert http_error_code(405) == "method_not_allowed"
    assert http_error_code(400) == "http_400"
    assert http_error_code(429) == "http_429"
