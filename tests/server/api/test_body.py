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
from batches import assert_nothing_stored, create_run, new_id, stats_block, valid_doc

from auth_headers import auth_headers
from layerwatch import wire
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


# -- every route with a body: capped before it is read -----------------------------

SMALL = 1024


@pytest.fixture(scope="module")
def capped_server(
    database_url: str, serve: Callable[[Settings], AbstractContextManager[str]]
) -> Iterator[str]:
    """A server on the shared database taking uploads of CAP bytes and other bodies of SMALL."""
    settings = Settings(database_url=database_url, max_body_bytes=CAP, max_request_bytes=SMALL)
    with serve(settings) as url:
        yield url


def bodied_operations(server: str) -> list[tuple[str, str, int]]:
    """(method, path, cap) of each operation the OpenAPI document gives a body."""
    document = httpx.get(f"{server}/openapi.json", timeout=10).raise_for_status().json()
    uploads = {"/api/v1/runs/{run_id}/batches", "/api/v1/runs/{run_id}/probes"}
    found = [
        (method.upper(), path, CAP if path in uploads else SMALL)
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
        if "requestBody" in operation
    ]
    assert {(method, path) for method, path, _ in found} >= {
        ("POST", "/api/v1/runs"), ("PATCH", "/api/v1/runs/{run_id}"),
        ("POST", "/api/v1/runs/{run_id}/batches"), ("POST", "/api/v1/runs/{run_id}/probes"),
    }  # fmt: skip
    return found


def declare(server: str, method: str, path: str, length: int) -> tuple[bytes, dict[str, str]]:
    """Send a request head declaring a body of ``length`` bytes, and no byte of it; the
    answer's status line and JSON body. The answer must come without the body."""
    host, port = server.removeprefix("http://").split(":")
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Authorization: {auth_headers()['Authorization']}\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode())
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    status, _, rest = reply.partition(b"\r\n")
    return status, json.loads(rest.partition(b"\r\n\r\n")[2])


def test_every_body_over_its_cap_is_refused_before_it_is_read(
    capped_server: str, api: httpx.Client
) -> None:
    run_id = create_run(api)
    for method, path, cap in bodied_operations(capped_server):
        url = path.replace("{run_id}", run_id)
        status, answer = declare(capped_server, method, url, cap + 1)
        assert status.startswith(b"HTTP/1.1 413 "), (method, path, status)
        assert answer["code"] == "payload_too_large", (method, path, answer)
        assert f"{cap}-byte limit" in answer["detail"]
    assert_nothing_stored(api, run_id)


def test_every_streamed_body_over_its_cap_is_refused(capped_server: str) -> None:
    with httpx.Client(base_url=capped_server, timeout=10, headers=auth_headers()) as client:
        for method, path, cap in bodied_operations(capped_server):
            url = path.replace("{run_id}", new_id("r"))  # the body is refused before the run

            def chunks(size: int = cap + 1) -> Iterator[bytes]:  # no Content-Length: chunked
                yield b'{"config": {"k": "'
                yield b"x" * size
                yield b'"}}'

            response = client.request(method, url, content=chunks())
            assert response.request.headers.get("transfer-encoding") == "chunked"
            assert response.status_code == 413, (method, path, response.text)
            assert response.json()["code"] == "payload_too_large"


def test_a_gzipped_run_is_read_and_capped_after_gzip(capped_server: str) -> None:
    api_url = f"{capped_server}/api/v1"
    with httpx.Client(base_url=api_url, timeout=10, headers=auth_headers()) as client:
        run = {"id": new_id("r"), "project": new_id("p"), "config": {"lr": 0.1}}
        small = gzip.compress(json.dumps(run).encode())
        assert client.post("/runs", content=small, headers=GZIP).status_code == 201
        run["config"] = {"notes": " " * 10 * SMALL}
        bomb = gzip.compress(json.dumps(run).encode())
        assert len(bomb) < SMALL
        response = client.post("/runs", content=bomb, headers=GZIP)
        assert response.status_code == 413, response.text
        assert "decompressed" in response.json()["detail"]
        brotli = client.patch(
            f"/runs/{run['id']}", content=b"{}", headers={"Content-Encoding": "br"}
        )
        assert brotli.status_code == 415


def test_the_largest_valid_run_fits_the_default_cap(api: httpx.Client) -> None:
    """A run of the largest config and names, each character escaped as \\uXXXX (up to 12
    bytes for 4 of UTF-8), is well within LAYERWATCH_MAX_REQUEST_BYTES' default."""
    wide = "\U0001f600"  # 4 bytes of UTF-8, 12 as a JSON escape
    blob = wide * ((wire.MAX_CONFIG_BYTES - 32) // 4)
    tags = [wide * 249 + str(i % 10) for i in range(64)]
    run = {"id": new_id("r"), "project": new_id("p"), "name": wide * 250, "host": wide * 250,
           "tags": tags, "config": {"notes": blob}}  # fmt: skip
    wire.RunCreate.model_validate(run)
    content = json.dumps(run, ensure_ascii=True).encode()
    assert 3 * wire.MAX_CONFIG_BYTES < len(content) < Settings().max_request_bytes / 2
    response = api.post("/runs", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 201, response.text[:500]
