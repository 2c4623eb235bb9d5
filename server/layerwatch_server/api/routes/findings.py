"""What the diagnosis finds wrong with a run, from the data it stored."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Request

from layerwatch_server.api.deps import SessionDep
from layerwatch_server.api.openapi import error_responses
from layerwatch_server.api.params import RunId
from layerwatch_server.diagnosis import FindingsCache
from layerwatch_server.schemas import FindingPublic, FindingsPublic

router = APIRouter(
    tags=["diagnosis"],
    responses=error_responses(404, 422, 503, not_found="`run_not_found`: no such run."),
)


@router.get("/runs/{run_id}/findings", response_model=FindingsPublic)
def get_findings(request: Request, session: SessionDep, run_id: RunId) -> FindingsPublic:
    """Dead units, vanishing or exploding gradients, NaN, parameters that do not move,
    saturation, odd update sizes and losses that diverge, swing or stall: errors first."""
    cache: FindingsCache = request.app.state.findings_cache
    findings = cache.diagnose(session, run_id)
    return FindingsPublic(findings=[FindingPublic(**asdict(f)) for f in findings])
