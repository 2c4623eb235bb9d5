"""The FastAPI application: routers, start-up migration and error handling.

Run it with ``layerwatch server``, or ``uvicorn --factory
layerwatch_server.main:create_app``. Nothing is created at import time.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi.utils import is_body_allowed_for_status_code
from pydantic import ValidationError
from sqlalchemy.exc import DataError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from layerwatch_server.api.answer_cache import AnswerCache
from layerwatch_server.api.auth import AUTHORIZE, AUTHORIZE_ADMIN, is_authenticated
from layerwatch_server.api.openapi import error_responses, finish_document
from layerwatch_server.api.routes import (
    export,
    findings,
    health,
    ingest,
    layers,
    probes,
    runs,
    sentinel,
    series,
    tokens,
    views,
)
from layerwatch_server.auth.hosts import HostAllowlist
from layerwatch_server.auth.rate_limit import TokenBuckets
from layerwatch_server.config import Settings, get_settings
from layerwatch_server.dashboard import install as install_dashboard
from layerwatch_server.db import make_engine, make_sessionmakers, managed_session
from layerwatch_server.diagnosis import FindingsCache
from layerwatch_server.errors import (
    UNAVAILABLE,
    InvalidQuery,
    LayerwatchError,
    Unauthorized,
    http_error_code,
)
from layerwatch_server.migrate import upgrade_database

logger = logging.getLogger("layerwatch_server")

API_PREFIX = "/api/v1"


class LayerwatchAPI(FastAPI):
    """The application; its OpenAPI document also says what FastAPI does not see (`openapi`)."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is not None:
            return self.openapi_schema
        document = super().openapi()
        finish_document(document)
        return document


def create_app(settings: Settings | None = None, *, migrate: bool = True) -> FastAPI:
    """Build the application for ``settings`` (default: from the environment).

    With ``migrate`` the database is upgraded to the newest schema at start-up.
    """
    settings = settings or get_settings()
    engine = make_engine(
        settings.resolved_database_url, sqlite_busy_timeout_ms=settings.sqlite_busy_timeout_ms
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if migrate:
            await run_in_threadpool(upgrade_database, engine)
        await run_in_threadpool(_log_auth_mode, app, settings)
        app.state.render_limiter = anyio.CapacityLimiter(settings.max_concurrent_renders)
        yield
        engine.dispose()

    app = LayerwatchAPI(
        title="layerwatch",
        summary="Activations, weights and gradients of PyTorch training runs.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.read_sessions, app.state.write_sessions = make_sessionmakers(engine)
    app.state.render_limiter = anyio.CapacityLimiter(settings.max_concurrent_renders)
    app.state.findings_cache = FindingsCache()
    app.state.answer_cache = AnswerCache(settings.answer_cache_bytes)
    app.state.tokens_exist = False
    app.state.rate_limiter = (
        TokenBuckets(settings.ingest_rate_limit, settings.ingest_burst)
        if settings.ingest_rate_limit > 0
        else None
    )

    # Deny by default: every router but the health checks needs a token, for every route
    # it has or will have (tests/server/api/test_auth_routes.py holds the list).
    app.include_router(health.router)
    for module in (runs, ingest, probes, series, layers, sentinel, views, export, findings):
        app.include_router(module.router, prefix=API_PREFIX, dependencies=[Depends(AUTHORIZE)])
    app.include_router(
        tokens.router,
        prefix=API_PREFIX,
        dependencies=[Depends(AUTHORIZE_ADMIN)],
        responses=error_responses(403),  # reads too: every token route needs an admin token
    )
    install_dashboard(app)
    _install_error_handlers(app, settings)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=False,  # tokens travel in a header, never in cookies
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Content-Encoding"],
            expose_headers=["ETag", "Retry-After", "X-Layerwatch-Downsampled"],
        )
    if "*" not in settings.allowed_hosts:
        app.add_middleware(HostAllowlist, allowed=settings.allowed_hosts)
    return app


def _log_auth_mode(app: FastAPI, settings: Settings) -> None:
    from layerwatch_server.store.tokens import any_tokens

    try:
        with managed_session(app.state.read_sessions) as session:
            exist = any_tokens(session)
    except OperationalError:  # not migrated (--no-migrate): /readyz says so
        return
    if exist:
        logger.info("authentication on: every API route needs a token")
    elif settings.allow_open:
        logger.warning(
            "no API token exists: serving WITHOUT authentication until one is created "
            "(layerwatch token create NAME --scope admin)"
        )
    else:
        logger.warning(
            "no API token exists: every API request is refused until one is created "
            "(layerwatch token create NAME --scope admin)"
        )


def _clean_errors(errors: Any) -> list[dict[str, Any]]:
    """Validation errors without the offending input, which may not be JSON-safe."""
    return [
        {"loc": list(error.get("loc", ())), "msg": error.get("msg", ""), "type": error.get("type")}
        for error in errors
    ]


def error_response(
    status: int, detail: Any, code: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The one shape of every error the server answers: ``{"detail": ..., "code": ...}``."""
    return JSONResponse({"detail": detail, "code": code}, status_code=status, headers=headers)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> list[str]:
    """The methods some route takes at the request's path (a 405 of the router names one)."""
    routes = request.app.router.routes
    return [
        method
        for method in _METHODS
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL
               for route in routes)
    ]  # fmt: skip


def _install_error_handlers(app: FastAPI, settings: Settings) -> None:
    @app.exception_handler(LayerwatchError)
    async def _domain(_: Request, error: LayerwatchError) -> JSONResponse:
        return error_response(error.status_code, error.detail, error.code, error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> Response:
        headers = dict(error.headers or {})
        if error.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(request))
        if not is_body_allowed_for_status_code(error.status_code):
            return Response(status_code=error.status_code, headers=headers)
        return error_response(
            error.status_code, error.detail, http_error_code(error.status_code), headers
        )

    @app.exception_handler(RequestValidationError)
    async def _request_invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        guarded = request.url.path.startswith(API_PREFIX)
        if guarded and not await run_in_threadpool(is_authenticated, request):
            refusal = Unauthorized()
            return error_response(
                refusal.status_code, refusal.detail, refusal.code, refusal.headers
            )
        return error_response(422, _clean_errors(error.errors()), InvalidQuery.code)

    @app.exception_handler(ValidationError)
    async def _payload_invalid(_: Request, error: ValidationError) -> JSONResponse:
        errors = error.errors(include_url=False, include_context=False, include_input=False)
        return error_response(422, _clean_errors(errors), InvalidQuery.code)

    @app.exception_handler(DataError)
    async def _out_of_range(_: Request, error: DataError) -> JSONResponse:
        detail = f"a value is out of range for the database: {error.orig}"[:500]
        return error_response(422, detail, InvalidQuery.code)

    async def _busy(_: Request, error: Exception) -> JSONResponse:
        logger.warning("database unavailable: %s", error)
        return error_response(
            503,
            "the database is busy or unavailable; retry later",
            UNAVAILABLE,
            {"Retry-After": str(settings.retry_after_seconds)},
        )

    app.add_exception_handler(OperationalError, _busy)
    app.add_exception_handler(PoolTimeoutError, _busy)
