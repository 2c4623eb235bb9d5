"""Authentication and authorization as FastAPI dependencies: deny by default.

``main.py`` puts an `Authorize` on every router it includes, so a route added
to any of them needs a token without saying so; ``tests/server/api/test_auth_routes.py``
fails when a route lacks one. The scope a route needs follows from its method
(GET and HEAD read, anything else writes) unless its router asks for more
(the token routes: admin).

Every refusal of identity is the same 401 (`Unauthorized`): a missing,
malformed, unknown, expired or revoked token are told apart only in the
server's log, never in the answer. A token limited to some projects meets
runs and projects outside them as if they did not exist (404), in paths,
``compare=`` overlays and listings alike.
"""

from __future__ import annotations

import logging
from typing import Annotated, NoReturn

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from layerwatch_server.api.body import RunCreateBody
from layerwatch_server.auth.access import OPEN, Access, Scope, scope_for_method
from layerwatch_server.auth.rate_limit import TokenBuckets, retry_after_seconds
from layerwatch_server.config import Settings
from layerwatch_server.db import managed_session
from layerwatch_server.errors import Conflict, Forbidden, RateLimited, Unauthorized
from layerwatch_server.store import tokens
from layerwatch_server.store.runs import no_such_project, no_such_run, run_project

logger = logging.getLogger("layerwatch_server.auth")

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="token",
    description="An API token (`lw_...`), made with `layerwatch token create`.",
)


def _server_is_open(request: Request, session: Session) -> bool:
    """Open while allowed and no token was ever created; once one is, closed for good."""
    settings: Settings = request.app.state.settings
    if not settings.allow_open or request.app.state.tokens_exist:
        return False
    if tokens.any_tokens(session):
        request.app.state.tokens_exist = True  # this process never looks again
        return False
    return True


SESSION_COOKIE = "layerwatch_token"
"""The dashboard's login: the token in an HttpOnly, SameSite=Strict cookie (`dashboard.login`)."""


def presented_secret(request: Request, header: str | None) -> str | None:
    """The token a request presents: its bearer header, else, for reads only, the
    dashboard's cookie. A cookie never authorizes a write, so a forged cross-site
    request (CSRF) has nothing to ride on even where SameSite is not honoured."""
    if header is not None:
        return header
    if request.method in ("GET", "HEAD"):
        return request.cookies.get(SESSION_COOKIE)
    return None


def authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Access:
    """Who is asking: the live token the request carries, or `OPEN` on an open server."""
    with managed_session(request.app.state.read_sessions) as session:
        if _server_is_open(request, session):
            return OPEN
        secret = presented_secret(request, credentials.credentials if credentials else None)
        if secret is None:
            _refuse(request, "no bearer token")
        token = tokens.find_token(session, secret)
        if token is None:
            _refuse(request, "a malformed, unknown, expired or revoked token")
        access = Access(
            scope=token.scope,  # type: ignore[arg-type]  # checked on the way in
            projects=None if token.projects is None else frozenset(token.projects),
            token_id=token.id,
            name=token.name,
        )
        touch = tokens.needs_touch(token)
    if touch:
        _touch(request.app.state.write_sessions, token.id)
    return access


def _refuse(request: Request, why: str) -> NoReturn:
    client = request.client.host if request.client else "?"
    logger.info("401 for %s %s from %s: %s", request.method, request.url.path, client, why)
    raise Unauthorized()


def _touch(sessions: sessionmaker[Session], token_id: int) -> None:
    # Bookkeeping, not worth failing or delaying a request for: a busy
    # database skips it, and the next request a minute later tries again.
    try:
        with managed_session(sessions) as session:
            tokens.touch_token(session, token_id)
    except OperationalError as error:
        logger.debug("last_used_at of token %s not written: %s", token_id, error)


AccessDep = Annotated[Access, Depends(authenticate)]


def is_authenticated(request: Request) -> bool:
    """Whether the request carries a live token (or the server is open), outside a route.

    FastAPI parses a JSON body before it runs any dependency: a body that is
    not JSON is refused before `Authorize` could refuse the caller. The
    handler of that refusal asks this first, so the caller without a token
    still hears 401, not what the route expects.
    """
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    secret = presented_secret(request, value.strip() if scheme.lower() == "bearer" else None)
    with managed_session(request.app.state.read_sessions) as session:
        if _server_is_open(request, session):
            return True
        return secret is not None and tokens.find_token(session, secret) is not None


class Authorize:
    """The dependency on every API route: a token whose scope and projects allow the request.

    ``scope`` None takes the scope from the method (`scope_for_method`).
    Writes count against the token's rate limit.
    """

    def __init__(self, scope: Scope | None = None) -> None:
        self.scope = scope

    def __call__(self, request: Request, access: AccessDep) -> Access:
        needed = self.scope or scope_for_method(request.method)
        if not access.allows(needed):
            raise Forbidden(f"this token's scope is `{access.scope}`; this needs `{needed}`")
        if needed == "admin" and access.projects is not None:
            # Token management with a token of some projects would make tokens of all.
            raise Forbidden("this needs an admin token of every project")
        if needed == "write" and access.token_id is not None:
            _limit_rate(request, access.token_id)
        if access.projects is not None:
            _check_projects(request, access)
        return access


AUTHORIZE = Authorize()
AUTHORIZE_ADMIN = Authorize("admin")


def _limit_rate(request: Request, token_id: int) -> None:
    buckets: TokenBuckets | None = request.app.state.rate_limiter
    if buckets is None:
        return
    wait = buckets.acquire(token_id)
    if wait > 0:
        raise RateLimited(retry_after_seconds(wait))


def _check_projects(request: Request, access: Access) -> None:
    """Runs and projects named by the request that the token does not cover: not found."""
    project = request.path_params.get("project") or request.query_params.get("project")
    if project is not None and not access.covers(project):
        raise no_such_project(project)
    query = request.query_params
    run_ids = [request.path_params.get("run_id"), *query.getlist("compare"), *query.getlist("run")]
    wanted = [run_id for run_id in run_ids if run_id]
    if not wanted:
        return
    with managed_session(request.app.state.read_sessions) as session:
        for run_id in wanted:
            owner = run_project(session, run_id)
            if owner is None or not access.covers(owner):
                raise no_such_run(run_id)


def readable_projects(access: AccessDep) -> frozenset[str] | None:
    """The projects a listing may show; None: every project."""
    return access.projects


ReadableProjects = Annotated[frozenset[str] | None, Depends(readable_projects)]


def authorize_run_create(request: Request, access: AccessDep, spec: RunCreateBody) -> None:
    """A run may be created only in a project the token covers (403 otherwise).

    Resuming an id that exists in a project the token cannot see is a
    `Conflict` that names no project: ids are global, the projects are not.
    """
    if not access.covers(spec.project):
        raise Forbidden(f"this token does not cover project `{spec.project}`")
    if spec.id is None or access.projects is None:
        return
    with managed_session(request.app.state.read_sessions) as session:
        owner = run_project(session, spec.id)
    if owner is not None and not access.covers(owner):
        raise Conflict(f"run id `{spec.id}` is taken")
