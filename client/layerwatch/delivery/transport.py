"""HTTP to a layerwatch server: the one place that makes clients and their headers,
compresses bodies, and turns answers into errors.

Errors are told apart by the status and by the stable `code` of the server's error
body (`{"detail": ..., "code": ...}`, listed in the README), never by the prose of
`detail`. Both the sender thread of a `Run` and the query client `Api` go through
`send()`.
"""

from __future__ import annotations

import email.utils
import gzip
import math
import os
import time

import httpx

from layerwatch import __version__
from layerwatch.errors import (
    DeliveryError,
    NotFoundError,
    PayloadTooLargeError,
    RejectedError,
    RetryableError,
    RunNotFoundError,
)
from layerwatch.options import TOKEN_ENV

__all__ = [
    "GZIP_MIN_BYTES",
    "RETRY_STATUS_CODES",
    "error_for",
    "make_client",
    "parse_retry_after",
    "send",
]

GZIP_MIN_BYTES = 16 * 1024
"""Bodies from this size on are sent gzip-compressed (level 1: cheap, and JSON shrinks
well)."""

RETRY_STATUS_CODES = frozenset({429, 502, 503, 504})

CONNECT_TIMEOUT = 3.0
"""Seconds to connect: short, and apart from the read timeout, so a server that is
down is told from one that is slow at once."""

QueryParams = list[tuple[str, str | int | float | bool | None]]


def make_client(
    *,
    timeout: float,
    base_url: str = "",
    transport: httpx.BaseTransport | None = None,
) -> httpx.Client:
    """An `httpx.Client` sending `User-Agent: layerwatch/<version>` and, when
    `$LAYERWATCH_TOKEN` is set, `Authorization: Bearer <token>`; `timeout` seconds
    to read, write or wait for a connection, at most `CONNECT_TIMEOUT` to connect."""
    headers = {"User-Agent": f"layerwatch/{__version__}"}
    token = os.environ.get(TOKEN_ENV)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    limits = httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT))
    return httpx.Client(base_url=base_url, timeout=limits, headers=headers, transport=transport)


def send(
    http: httpx.Client,
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    params: QueryParams | None = None,
) -> httpx.Response:
    """Send one request and return its 2xx answer, or raise the `DeliveryError` it means.

    A JSON `body` of `GZIP_MIN_BYTES` or more goes gzip-compressed. Connection
    failures and timeouts raise `RetryableError`; a client that cannot send at all
    (closed, say) raises `RejectedError`, since trying again would not help.
    """
    headers = {}
    if body is not None:
        headers["Content-Type"] = "application/json"
        if len(body) >= GZIP_MIN_BYTES:
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
    try:
        # The client's own timeout applies: Starlette's TestClient warns at any other.
        response = http.request(method, url, content=body, params=params, headers=headers)
    except httpx.TransportError as exc:
        raise RetryableError(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        raise RejectedError(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
    if not response.is_success:
        raise error_for(method, url, response)
    return response


def error_for(method: str, url: str, response: httpx.Response) -> DeliveryError:
    """The error an unsuccessful (already read) `response` means."""
    status = response.status_code
    detail, code = _error_body(response)
    if isinstance(detail, list):  # validation errors: where and what
        text = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}"
            if isinstance(e, dict) else str(e)
            for e in detail
        )  # fmt: skip
    else:
        text = str(detail)
    message = f"{method} {url}: {status} {response.reason_phrase}: {text}"[:2000]
    if status in RETRY_STATUS_CODES:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return RetryableError(
            message, status_code=status, retry_after=retry_after, detail=detail, code=code
        )
    cls: type[RejectedError] = RejectedError
    if status == 413:
        cls = PayloadTooLargeError
    elif code == "run_not_found":
        cls = RunNotFoundError
    elif status == 404:
        cls = NotFoundError
    return cls(message, status_code=status, detail=detail, code=code)


def _error_body(response: httpx.Response) -> tuple[object, str | None]:
    """`detail` and `code` of a layerwatch error body; the raw text from anything else
    (a proxy's HTML page, say)."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:2000], None
    if not isinstance(body, dict):
        return body, None
    code = body.get("code")
    return body.get("detail", response.text[:2000]), code if isinstance(code, str) else None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)
