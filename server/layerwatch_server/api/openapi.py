"""What the OpenAPI document says beyond what FastAPI sees: errors, and bodies read by hand.

FastAPI documents the bodies it parses and the models it answers with. Every
route here reads its own body (`body.read_body`: gzip, a size cap) and some
answers are written by hand (a probe), so their schemas are made here, from
the `layerwatch.wire` models (`wire_schema`), with their definitions under
`$defs`; `finish_document` moves those into the document's components, where
their `$ref`s point. Every error a route answers is one `ErrorPublic`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from layerwatch_server.auth.access import scope_for_method
from layerwatch_server.schemas import ErrorPublic
from layerwatch_server.wire_schema import REF_TEMPLATE, model_schema

Responses = dict[int | str, dict[str, Any]]

_ERRORS: dict[int, str] = {
    400: "`invalid_host`: a Host header outside the server's allowlist; or, in plain text, a "
    "request the HTTP server cannot read (malformed, or a URL or headers over its limits).",
    401: "`unauthorized`: no token, or one that is malformed, unknown, expired or revoked.",
    403: "`forbidden`: the token's scope does not allow this, or it does not cover the "
    "project a run is created in.",
    404: "Not found: `run_not_found`, `tensor_not_found`, `scalar_not_found`, "
    "`project_not_found`, `probe_not_found` or `not_found`.",
    409: "`conflict`: the write contradicts what is stored.",
    413: "`payload_too_large`: the body is over its size cap, before or after gzip.",
    415: "`unsupported_encoding`: a `Content-Encoding` other than gzip.",
    422: "`invalid`: a parameter or the body fails validation, parameters that make no sense "
    "together, or a value out of the database's range.",
    429: "`rate_limited`: the token sent more writes than its rate allows; retry after "
    "`Retry-After` seconds.",
    503: "`unavailable`: the database is busy or unavailable; retry after `Retry-After` seconds.",
}
_RETRY_AFTER = {
    "description": "Seconds to wait before retrying.",
    "required": True,
    "schema": {"type": "integer", "minimum": 0},
}
_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "`Bearer`.", "required": True,
                               "schema": {"type": "string"}}},
    429: {"Retry-After": _RETRY_AFTER},
    503: {"Retry-After": _RETRY_AFTER},
}  # fmt: skip


def error_responses(*statuses: int, not_found: str | None = None) -> Responses:
    """``responses=`` of a route that may answer these errors; ``not_found`` says what a 404 is."""
    responses: Responses = {}
    for status in statuses:
        description = not_found if status == 404 and not_found else _ERRORS[status]
        responses[status] = {"model": ErrorPublic, "description": description}
        if status in _HEADERS:
            responses[status]["headers"] = _HEADERS[status]
    return responses


def _error_answer(status: int) -> dict[str, Any]:
    """An error response written into the document itself, past FastAPI."""
    answer = {
        "description": _ERRORS[status],
        "content": {
            "application/json": {"schema": {"$ref": REF_TEMPLATE.format(model="ErrorPublic")}}
        },
    }
    return answer | ({"headers": _HEADERS[status]} if status in _HEADERS else {})


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` of a route that reads its body itself: ``model`` as JSON, or gzipped."""
    return {
        "requestBody": {
            "required": True,
            "description": f"A `{model.__name__}` as JSON, optionally with "
            "`Content-Encoding: gzip`.",
            "content": {"application/json": {"schema": model_schema(model, "validation")}},
        }
    }


def json_answer(model: type[BaseModel], description: str) -> dict[str, Any]:
    """A ``responses=`` entry of a route that writes ``model`` as JSON itself."""
    return {
        "description": description,
        "content": {"application/json": {"schema": model_schema(model, "serialization")}},
    }


def finish_document(document: dict[str, Any]) -> None:
    """What FastAPI leaves out of the document: hoisted definitions, and the errors of what
    stands before every route: the HTTP server and the Host allowlist (400), and the token
    (401; 403 and 429 where it must allow a write)."""
    hoist_definitions(document)
    bad_request = _error_answer(400)
    bad_request["content"]["text/plain"] = {"schema": {"type": "string"}}
    for operations in document.get("paths", {}).values():
        for method, operation in operations.items():
            responses = operation["responses"]
            responses.setdefault("400", bad_request)
            if not operation.get("security"):
                continue
            responses.setdefault("401", _error_answer(401))
            if scope_for_method(method) != "read":
                responses.setdefault("403", _error_answer(403))
                responses.setdefault("429", _error_answer(429))


def hoist_definitions(document: dict[str, Any]) -> None:
    """Move every `$defs` in the document's paths into its components (in place).

    Two definitions of one name must be equal: otherwise a `$ref` would mean
    two things, and building the document fails.
    """
    components: dict[str, Any] = document.setdefault("components", {}).setdefault("schemas", {})

    def visit(node: object) -> None:
        if isinstance(node, dict):
            for name, schema in node.pop("$defs", {}).items():
                if components.setdefault(name, schema) != schema:
                    raise ValueError(f"two different schemas are named `{name}`")
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(document.get("paths", {}))
