"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from layerwatch_server.errors import UNAVAILABLE
from layerwatch_server.migrate import is_up_to_date
from layerwatch_server.schemas import Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready: `unavailable`."}},
)
def readyz(request: Request) -> JSONResponse:
    """The database answers and its schema is at the newest migration."""
    engine = request.app.state.engine
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        migrated = is_up_to_date(engine)
    except Exception as error:  # any failure means "not ready", never a 500
        return _unavailable(str(error)[:200])
    if not migrated:
        return _unavailable("schema is not migrated")
    return JSONResponse({"status": "ok", "database": engine.dialect.name})


def _unavailable(detail: str) -> JSONResponse:
    return JSONResponse({"status": "unavailable", "detail": detail, "code": UNAVAILABLE}, 503)
