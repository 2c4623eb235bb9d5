"""Probes: the model's outputs on its fixed probe inputs, uploaded and read back."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool

from layerwatch import wire
from layerwatch_server import store
from layerwatch_server.api.body import json_body, read_body
from layerwatch_server.api.deps import SessionDep, SettingsDep, WriteSessionsDep
from layerwatch_server.api.params import Rank, RunId
from layerwatch_server.db import managed_session
from layerwatch_server.schemas import ProbesPublic

router = APIRouter(tags=["probes"])


@router.post(
    "/runs/{run_id}/probes",
    response_model=wire.ProbeReceipt,
    openapi_extra=json_body(wire.Probe),
    responses={
        404: {"description": "No such run"},
        409: {"description": "The probe contradicts the one stored for its step"},
        413: {"description": "Body too large: send the layers in several requests"},
        422: {"description": "Invalid probe"},
    },
)
async def ingest_probe(
    run_id: RunId, request: Request, sessions: WriteSessionsDep, settings: SettingsDep
) -> wire.ProbeReceipt:
    """Store a probe, or some of its layers; sending the same layers again is a no-op."""
    body = await read_body(request, settings.max_body_bytes)

    def parse_and_store() -> wire.ProbeReceipt:
        probe = wire.Probe.model_validate_json(body)
        with managed_session(sessions) as session:
            return store.ingest_probe(session, run_id, probe)

    return await run_in_threadpool(parse_and_store)


@router.get("/runs/{run_id}/probes", response_model=ProbesPublic)
def list_probes(session: SessionDep, run_id: RunId, rank: Rank = 0) -> ProbesPublic:
    """The run's probes by step, with each layer's shapes but not its values."""
    return store.list_probes(session, run_id, rank=rank)


@router.get("/runs/{run_id}/probes/{step}", response_model=wire.Probe)
def get_probe(
    session: SessionDep,
    run_id: RunId,
    step: Annotated[int, Path(ge=0, le=wire.MAX_INT64)],
    rank: Rank = 0,
    layer: Annotated[
        list[str] | None,
        Query(max_length=1024, description="Layers to return (repeat); all when omitted."),
    ] = None,
) -> wire.Probe:
    """One probe with its values, in the upload format: packed float16 / int32 as base64."""
    return store.get_probe(session, run_id, step, rank=rank, layers=layer)
