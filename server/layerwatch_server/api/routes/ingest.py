"""Receiving measurement batches from clients."""

from __future__ import annotations

import hashlib

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from layerwatch import wire
from layerwatch_server import store
from layerwatch_server.api.body import parse_json, read_body
from layerwatch_server.api.deps import SettingsDep, WriteSessionsDep
from layerwatch_server.api.openapi import error_responses, json_body
from layerwatch_server.api.params import RunId
from layerwatch_server.db import managed_session

router = APIRouter(tags=["ingest"])


@router.post(
    "/runs/{run_id}/batches",
    response_model=wire.BatchReceipt,
    openapi_extra=json_body(wire.Batch),
    responses=error_responses(
        404, 409, 413, 415, 422, 503, not_found="`run_not_found`: no run with this id."
    ),
)
async def ingest_batch(
    run_id: RunId,
    request: Request,
    sessions: WriteSessionsDep,
    settings: SettingsDep,
) -> wire.BatchReceipt:
    """Store a batch of measurements; answers only after it is committed."""
    body = await read_body(request, settings.max_body_bytes)

    def parse_and_store() -> wire.BatchReceipt:
        # Parsing, storing and committing share one worker-thread hop: a batch
        # is small work, and each hop costs as much as validating it.
        batch = parse_json(wire.Batch, body)
        digest = hashlib.sha256(body).hexdigest()
        with managed_session(sessions) as session:
            return store.ingest_batch(session, run_id, batch, digest=digest)

    return await run_in_threadpool(parse_and_store)
