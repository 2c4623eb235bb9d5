"""Receiving measurement batches from clients."""

from __future__ import annotations

import hashlib
import zlib
from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.concurrency import run_in_threadpool

from layerwatch import wire
from layerwatch_server import store
from layerwatch_server.api.deps import SettingsDep, WriteSessionsDep
from layerwatch_server.db import managed_session
from layerwatch_server.errors import InvalidQuery, PayloadTooLarge, UnsupportedEncoding

router = APIRouter(tags=["ingest"])

_BATCH_BODY = {
    "requestBody": {
        "required": True,
        "description": "A `Batch` as JSON, optionally with `Content-Encoding: gzip`.",
        "content": {"application/json": {"schema": wire.Batch.model_json_schema()}},
    }
}


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


@router.post(
    "/runs/{run_id}/batches",
    response_model=wire.BatchReceipt,
    openapi_extra=_BATCH_BODY,
    responses={
        404: {"description": "No such run"},
        409: {"description": "The batch contradicts stored data"},
        413: {"description": "Body too large"},
        415: {"description": "Content-Encoding other than gzip"},
        422: {"description": "Invalid batch"},
        503: {"description": "Database busy; retry after `Retry-After` seconds"},
    },
)
async def ingest_batch(
    run_id: Annotated[str, Path(max_length=64)],
    request: Request,
    sessions: WriteSessionsDep,
    settings: SettingsDep,
) -> wire.BatchReceipt:
    """Store a batch of measurements; answers only after it is committed."""
    body = await read_body(request, settings.max_body_bytes)

    def parse_and_store() -> wire.BatchReceipt:
        # Parsing, storing and committing share one worker-thread hop: a batch
        # is small work, and each hop costs as much as validating it.
        batch = wire.Batch.model_validate_json(body)
        digest = hashlib.sha256(body).hexdigest()
        with managed_session(sessions) as session:
            return store.ingest_batch(session, run_id, batch, digest=digest)

    return await run_in_threadpool(parse_and_store)
