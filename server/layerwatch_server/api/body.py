"""Request bodies: read under a size cap (before and after gzip) and parsed, by hand.

No route lets FastAPI read its body: every body is read by `read_body`,
which refuses a ``Content-Length`` over the cap before reading a byte of the
body, and a streamed body as soon as it passes the cap. The uploads (batches,
probes) read theirs under ``max_body_bytes``; the other routes take theirs as a
`json_payload` dependency, read under ``max_request_bytes``. `parse_json`
reads JSON as strictly as the OpenAPI document describes it.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails, InitErrorDetails

from layerwatch import wire
from layerwatch_server.config import Settings
from layerwatch_server.errors import InvalidQuery, PayloadTooLarge, UnsupportedEncoding
from layerwatch_server.wire_schema import NONFINITE

M = TypeVar("M", bound=BaseModel)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding == "gzip":
        return _gunzip(body, limit)
    if encoding not in ("identity", ""):
        raise UnsupportedEncoding(f"unsupported Content-Encoding `{encoding}`; use gzip or none")
    return body


def _gunzip(body: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as error:
        raise InvalidQuery(f"body is not valid gzip: {error}") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed body exceeds the {limit}-byte limit")
    return data


def parse_json(model: type[M], body: bytes) -> M:
    """``model`` from a JSON body, as strict as its schema, save for non-finite floats.

    Strict: an integer is not ``true`` or ``"3"``, a number not ``"1.5"``.
    Lax parsing reads what the schema allows besides: NaN and the infinities,
    which travel as the strings "NaN", "Infinity" and "-Infinity", and integers
    written as ``3.0`` (JSON Schema's integers). So a body strict parsing
    refuses is parsed laxly: what that refuses is refused with its errors; what
    it takes is taken if strict parsing refused only those, and refused with
    strict parsing's other errors if not.
    """
    return _strictly(lambda strict: model.model_validate_json(body, strict=strict))


def parse_small_json(model: type[M], body: bytes) -> M:
    """`parse_json` through Python's JSON parser, which, unlike pydantic's, reads lone
    surrogates: the model's own checks then say where they are."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as error:
        raise ValidationError.from_exception_data(
            model.__name__, [{"type": "json_invalid", "loc": (), "input": None,
                              "ctx": {"error": str(error)[:200]}}],
        ) from None  # fmt: skip
    return _strictly(lambda strict: model.model_validate(data, strict=strict))


def _strictly(validate: Callable[[bool], M]) -> M:
    try:
        return validate(True)
    except ValidationError as error:
        strict = error
    parsed = validate(False)
    issues = [_init_details(i) for i in strict.errors() if not _schema_allows(i)]
    if issues:
        raise ValidationError.from_exception_data(strict.title, issues)
    return parsed


def _schema_allows(issue: ErrorDetails) -> bool:
    """Whether strict parsing refused what the OpenAPI document allows."""
    value = issue["input"]
    if issue["type"] == "float_type":
        return value in NONFINITE
    return issue["type"] == "int_type" and isinstance(value, float) and value.is_integer()


def _init_details(issue: ErrorDetails) -> InitErrorDetails:
    return {"type": issue["type"], "loc": issue["loc"], "input": issue["input"],
            "ctx": issue.get("ctx", {})}  # fmt: skip


def json_payload(model: type[M]) -> Callable[[Request], Coroutine[Any, Any, M]]:
    """A dependency: the request's body as ``model``, read under ``max_request_bytes``.

    For routes whose body is small (runs); document it with ``openapi.json_body``.
    """

    async def read(request: Request) -> M:
        settings: Settings = request.app.state.settings
        return parse_small_json(model, await read_body(request, settings.max_request_bytes))

    return read


# One dependency per body, so that all who ask for it share the one reading (FastAPI
# caches a dependency's value per request): `auth.authorize_run_create` and the route.
RunCreateBody = Annotated[wire.RunCreate, Depends(json_payload(wire.RunCreate))]
RunUpdateBody = Annotated[wire.RunUpdate, Depends(json_payload(wire.RunUpdate))]
