"""Request bodies (``api/body.py``): unreadable ones, unknown encodings, and the size cap,
before and after gzip; a refused body stores nothing."""

from __future__ import annotations

import gzip
import json
import socket
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import httpx
import pytest
from batches import assert_nothing_stored, create_run, stats_block, valid_doc

from auth_headers import auth_headers
from layerwatch_server.config import Settings

GZIP = {"Content-Encoding": "gzip"}


BAD_BODIES: dict[str, tuple[bytes, dict[str, str], int, str]] = {
    "invalid JSON": (b'{"batch_id": "b1", "stats": [}', {}, 422, "json"),
    "truncated JSON": (json.dumps(valid_doc()).encode()[:-5], {}, 422, "json"),
    "empty body": (b"", {}, 422, "json"),
    "a JSON list": (b"[1, 2, 3]", {}, 422, "object"),
    "not UTF-8": (b'{"batch_id": "\xff\xfe"}', {}, 422, "json"),
    "gzip that is not gzip": (b"plain text", GZIP, 422, "gzip"),
    "cut-off gzip": (gzip.compress(json.dumps(valid_doc()).encode())[:40], GZIP, 422, "json"),
    "brotli": (b"{}", {"Content-Encoding": "br"}, 415, "Content-Encoding"),
    "gzip twice": (b"{}", {"Content-Encoding": "gzip, gzip"}, 415, "Content-Encoding"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_unreadable_body_is_refused(api: httpx.Client, case: str) -> None:
    content, headers, status, word = BAD_BODIES[case]
    run_id = create_run(api)

    response = api.post(f"/runs/{run_id}/batches", content=content, headers=headers)

    assert response.status_code == status, response.text
    assert word.lower() in response.text.lower()
    assert_nothing_stored(api, run_id)


CAP = 4096


@pytest.fixture(scope="module")
def small_server(
    database_url: str, serve: Callable[[Settings], AbstractContextManager[str]]
) -> Iterator[str]:
    """A server on the shared database that takes bodies of at most CAP bytes."""
    with serve(Settings(database_url=database_url, max_body_bytes=CAP)) as url:
        yield url


@pytest.fixture(scope="module")
def small_api(small_server: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        headers=auth_headers(), base_url=f"{small_server}/api/v1", timeout=10
    ) as client:
        yield client


def test_a_body_within_the_cap_is_accepted(small_api: httpx.Client) -> None:
    run_id = create_run(small_api)
    content = json.dumps(valid_doc()).encode()
    assert len(content) < CAP
    assert small_api.post(f"/runs/{run_id}/batches", content=content).status_code == 200


def test_declared_length_over_the_cap_is_refused_before_the_body(
    small_server: str, small_api: httpx.Client
) -> None:
    run_id = create_run(small_api)
    host, port = small_server.removeprefix("http://").split(":")
    head = (
        f"POST /api/v1/runs/{run_id}/batches HTTP/1.1\r\n"
        f"Host: {host}\r\nContent-Type: application/json\r\n"
        f"Authorization: {auth_headers()['Authorization']}\r\n"
        f"Content-Length: {100 * CAP}\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode())  # and not a byte of the body: the answer must not wait
        reply = sock.recv(65536)

    assert reply.startswith(b"HTTP/1.1 413 "), reply[:200]
    assert b"limit" in reply
    assert_nothing_stored(small_api, run_id)


def test_chunked_body_over_the_cap_is_refused(small_api: httpx.Client) -> None:
    run_id = create_run(small_api)
    doc = valid_doc()
    doc["stats"] = [stats_block(f"layer{i}", range(20)) for i in range(20)]
    content = json.dumps(doc).encode()
    assert len(content) > 4 * CAP

    def chunks() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding: chunked
        for start in range(0, len(content), 1000):
            yield content[start : start + 1000]

    response = small_api.post(f"/runs/{run_id}/batches", content=chunks())

    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in response.request.headers
    assert response.status_code == 413, response.text
    assert_nothing_stored(small_api, run_id)


def test_gzip_bomb_is_refused(small_api: httpx.Client) -> None:
    run_id = create_run(small_api)
    bomb = gzip.compress(json.dumps(valid_doc()).encode() + b" " * 2_000_000)
    assert len(bomb) < CAP

    response = small_api.post(
        f"/runs/{run_id}/batches", content=bomb, headers={"Content-Encoding": "gzip"}
    )

    assert response.status_code == 413, response.text
    assert "decompressed" in response.text
    assert_nothing_stored(small_api, run_id)


def test_gzip_within_the_cap_is_accepted(small_api: httpx.Client) -> None:
    run_id = create_run(small_api)
    content = gzip.compress(json.dumps(valid_doc()).encode())
    response = small_api.post(
        f"/runs/{run_id}/batches", content=content, headers={"Content-Encoding": "gzip"}
    )
    assert response.status_code == 200, response.text
