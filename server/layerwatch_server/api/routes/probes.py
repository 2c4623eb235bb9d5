"""Probes: the model's outputs on its fixed probe inputs, uploaded and read back."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from layerwatch import wire
from layerwatch_server import store
from layerwatch_server.api.body import parse_json, read_body
from layerwatch_server.api.deps import SessionDep, SettingsDep, WriteSessionsDep
from layerwatch_server.api.openapi import error_responses, json_answer, json_body
from layerwatch_server.api.params import Rank, RunId
from layerwatch_server.db import managed_session
from layerwatch_server.schemas import ProbesPublic

router = APIRouter(tags=["probes"])

_RUN_NOT_FOUND = "`run_not_found`: no run with this id."


@router.post(
    "/runs/{run_id}/probes",
    response_model=wire.ProbeReceipt,
    openapi_extra=json_body(wire.Probe),
    responses=error_responses(404, 409, 413, 415, 422, 503, not_found=_RUN_NOT_FOUND),
)
async def ingest_probe(
    run_id: RunId, request: Request, sessions: WriteSessionsDep, settings: SettingsDep
) -> wire.ProbeReceipt:
    """Store a probe, or some of its layers; sending the same layers again is a no-op."""
    body = await read_body(request, settings.max_body_bytes)

    def parse_and_store() -> wire.ProbeReceipt:
        probe = parse_json(wire.Probe, body)
        with managed_session(sessions) as session:
            return store.ingest_probe(session, run_id, probe)

    return await run_in_threadpool(parse_and_store)


@router.get(
    "/runs/{run_id}/probes",
    response_model=ProbesPublic,
    responses=error_responses(404, 422, 503, not_found=_RUN_NOT_FOUND),
)
def list_probes(session: SessionDep, run_id: RunId, rank: Rank = 0) -> ProbesPublic:
    """The run's probes by step: each layer's shapes (no values), and the layers left out."""
    return store.list_probes(session, run_id, rank=rank)


@router.get(
    "/runs/{run_id}/probes/{step}",
    response_class=Response,
    responses={
        200: json_answer(wire.Probe, "The probe, as it was uploaded."),
        **error_responses(
            404,
            422,
            503,
            not_found="`run_not_found`, or `probe_not_found`: no probe at this "
            "step, or it has no such layer.",
        ),
    },
)
def get_probe(
    session: SessionDep,
    run_id: RunId,
    step: Annotated[int, Path(ge=0, le=wire.MAX_INT64)],
    rank: Rank = 0,
    layer: Annotated[
        list[str] | None,
        Query(max_length=1024, description="Layers to return (repeat); all when omitted."),
    ] = None,
) -> Response:
    """One probe with its values, in the upload format: packed float16 / int32 as base64."""
    probe = store.get_probe(session, run_id, step, rank=rank, layers=layer)
    return Response(probe.model_dump_json(), media_type="application/json")
