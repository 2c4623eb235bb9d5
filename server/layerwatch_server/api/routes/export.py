"""A run's measurements as files: one table as CSV (streamed), or every series as npz."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session, sessionmaker

from layerwatch import wire
from layerwatch_server.api.openapi import error_responses
from layerwatch_server.api.params import AnyRank, RunId, Step
from layerwatch_server.db import managed_session
from layerwatch_server.store.export import ExportPlan, Table, iter_csv, plan_export, write_npz
from layerwatch_server.wire_schema import Name

router = APIRouter(
    tags=["export"],
    responses=error_responses(
        404,
        422,
        503,
        not_found="`run_not_found`, `tensor_not_found` or `scalar_not_found`: "
        "no such run, or the run has no such tensor or scalar.",
    ),
)

Names = Annotated[list[Name] | None, Query(max_length=1024)]


def _plan(
    request: Request,
    run_id: str,
    kind: wire.Kind | None,
    tensor: list[str] | None,
    name: list[str] | None,
    start: int | None,
    end: int | None,
    rank: int | None,
) -> ExportPlan:
    # A session of its own, closed before the response streams: each page of
    # the CSV is read in a short session of its own.
    sessions: sessionmaker[Session] = request.app.state.read_sessions
    with managed_session(sessions) as session:
        return plan_export(
            session, run_id, kind=kind, tensors=tensor or (), names=name or (), start=start,
            end=end, rank=rank,
        )  # fmt: skip


Kind = Annotated[wire.Kind | None, Query(description="Only tensors of this kind.")]
Tensors = Annotated[Names, Query(description="Only these tensors (repeat).")]
Scalars = Annotated[Names, Query(description="Only these scalars (repeat).")]


@router.get(
    "/runs/{run_id}/export.csv",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}, "description": "CSV."}},
)
def export_csv(
    request: Request,
    run_id: RunId,
    table: Table = "stats",
    kind: Kind = None,
    tensor: Tensors = None,
    name: Scalars = None,
    start: Step = None,
    end: Step = None,
    rank: Annotated[AnyRank, Query(description="Only this rank; every rank when omitted.")] = None,
) -> StreamingResponse:
    """One table of a run in long format (one row per record), streamed as CSV."""
    plan = _plan(request, run_id, kind, tensor, name, start, end, rank)
    return StreamingResponse(
        iter_csv(request.app.state.read_sessions, plan, table),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{run_id}-{table}.csv"'},
    )


@router.get(
    "/runs/{run_id}/export.npz",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "A NumPy npz."}},
)
def export_npz(
    request: Request,
    run_id: RunId,
    kind: Kind = None,
    tensor: Tensors = None,
    name: Scalars = None,
    start: Step = None,
    end: Step = None,
    rank: Annotated[AnyRank, Query(description="The rank to export (default 0).")] = None,
) -> Response:
    """Every series of a run: statistics, scalars, weight changes, unit means, histograms."""
    plan = _plan(request, run_id, kind, tensor, name, start, end, rank)
    with managed_session(request.app.state.read_sessions) as session:
        content = write_npz(session, plan)
    return Response(
        content,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{run_id}.npz"'},
    )
