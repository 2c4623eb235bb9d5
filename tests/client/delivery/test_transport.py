"""The one HTTP layer: headers, gzip, and answers turned into errors by status and code."""

from __future__ import annotations

import email.utils
import gzip
import json
import time

import httpx
import pytest

import layerwatch
from layerwatch.delivery.transport import (
    GZIP_MIN_BYTES,
    error_for,
    make_client,
    parse_retry_after,
    send,
)
from layerwatch.errors import (
    NotFoundError,
    PayloadTooLargeError,
    RejectedError,
    RetryableError,
    RunNotFoundError,
)


def test_parse_retry_after() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("-1") == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None
    assert parse_retry_after("inf") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    future = email.utils.formatdate(time.time() + 100, usegmt=True)
    assert 95 < (parse_retry_after(future) or 0) <= 100


def _answer(status: int, body: object = None, **headers: str) -> httpx.Response:
    request = httpx.Request("GET", "http://server/api/v1/runs/r1")
    if isinstance(body, str):
        return httpx.Response(status, text=body, headers=headers, request=request)
    return httpx.Response(status, json=body, headers=headers, request=request)


@pytest.mark.parametrize(
    ("status", "body", "error", "code"),
    [
        (404, {"detail": "run `r1` does not exist", "code": "run_not_found"}, RunNotFoundError,
         "run_not_found"),
        # The same prose with another code is not a lost run: codes decide, never prose.
        (404, {"detail": "run `r1` does not exist", "code": "tensor_not_found"}, NotFoundError,
         "tensor_not_found"),
        (404, "<html>no such page</html>", NotFoundError, None),  # a proxy's page
        (413, {"detail": "too large", "code": "payload_too_large"}, PayloadTooLargeError,
         "payload_too_large"),
        (409, {"detail": "differs", "code": "conflict"}, RejectedError, "conflict"),
        (422, {"detail": [{"loc": ["body", "steps"], "msg": "bad"}], "code": "invalid"},
         RejectedError, "invalid"),
        (503, {"detail": "busy", "code": "unavailable"}, RetryableError, "unavailable"),
        (500, "Internal Server Error", RejectedError, None),
    ],
)  # fmt: skip
def test_answers_become_errors_by_status_and_code(
    status: int, body: object, error: type[Exception], code: str | None
) -> None:
    found = error_for("GET", "/runs/r1", _answer(status, body))
    assert type(found) is error
    assert found.status_code == status
    assert found.code == code


def test_validation_errors_say_where_and_what() -> None:
    body = {"detail": [{"loc": ["body", "steps", 0], "msg": "too big"}], "code": "invalid"}
    found = error_for("POST", "/runs/r1/batches", _answer(422, body))
    assert "body.steps.0: too big" in str(found)
    assert found.detail == body["detail"]


def test_retry_after_comes_with_retryable_answers() -> None:
    found = error_for("GET", "/x", _answer(429, {"detail": "slow down"}, **{"Retry-After": "7"}))
    assert isinstance(found, RetryableError)
    assert found.retry_after == 7.0


def test_send_compresses_large_bodies_and_sets_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAYERWATCH_TOKEN", "secret-token")
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={})

    with make_client(timeout=5, transport=httpx.MockTransport(handle)) as http:
        small = json.dumps({"a": 1}).encode()
        large = json.dumps({"a": "x" * GZIP_MIN_BYTES}).encode()
        send(http, "POST", "http://server/a", body=small)
        send(http, "POST", "http://server/b", body=large)
    assert "Content-Encoding" not in seen[0].headers
    assert seen[0].content == small
    assert seen[1].headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(seen[1].content) == large
    for request in seen:
        assert request.headers["Authorization"] == "Bearer secret-token"
        assert request.headers["User-Agent"] == f"layerwatch/{layerwatch.__version__}"
        assert request.headers["Content-Type"] == "application/json"


def test_no_token_no_authorization(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAYERWATCH_TOKEN", raising=False)
    with make_client(timeout=5) as http:
        assert "Authorization" not in http.headers


def test_connect_timeout_is_short_and_apart_from_the_read_timeout() -> None:
    with make_client(timeout=10) as http:
        assert (http.timeout.connect, http.timeout.read) == (3.0, 10.0)
    with make_client(timeout=1) as http:
        assert (http.timeout.connect, http.timeout.read) == (1.0, 1.0)


def test_connection_failures_are_retryable_and_closed_clients_are_not() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    http = make_client(timeout=5, transport=httpx.MockTransport(refuse))
    with pytest.raises(RetryableError) as caught:
        send(http, "GET", "http://server/x")
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    http.close()
    with pytest.raises(RejectedError):
        send(http, "GET", "http://server/x")
