"""Non-finite events: the step and tensor where a NaN or inf first appeared."""

from __future__ import annotations

from fastapi import APIRouter

from layerwatch_server.api.deps import SessionDep
from layerwatch_server.api.openapi import error_responses
from layerwatch_server.api.params import RunId
from layerwatch_server.schemas import NonfiniteEventsPublic
from layerwatch_server.store.sentinel import nonfinite_events

router = APIRouter(
    tags=["runs"],
    responses=error_responses(404, 422, 503, not_found="`run_not_found`: no such run."),
)


@router.get("/runs/{run_id}/nonfinite", response_model=NonfiniteEventsPublic)
def get_nonfinite_events(session: SessionDep, run_id: RunId) -> NonfiniteEventsPublic:
    """Each time a watched tensor turned non-finite (NaN or inf) after being finite: the
    first step and tensor the client's sentinel saw between two of its reports, with the
    others that turned at that step; sorted by step, then rank."""
    events = nonfinite_events(session, run_id)
    return NonfiniteEventsPublic(data=events, count=len(events))
