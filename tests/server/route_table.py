"""The app's routes with the scope each needs, read from their dependencies.

``PUBLIC`` is the allowlist of routes that need no token.
"""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import iter_route_contexts

from layerwatch_server.api.auth import Authorize
from layerwatch_server.auth.access import Scope, scope_for_method

PUBLIC = {
    "/healthz",  # the process is alive
    "/readyz",  # the database answers and is migrated
    # The API's description, as in the source: no data, nothing a token would protect.
    "/openapi.json",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
    # The dashboard's login form, its post and the logout (CSRF-checked), and the
    # pages' scripts and styles: no data. The pages themselves need a reader's token.
    "/login",
    "/logout",
    "/static",
}


def _calls(dependant: Dependant) -> Iterator[object]:
    yield dependant.call
    for sub in dependant.dependencies:
        yield from _calls(sub)


def route_scopes(app: FastAPI) -> dict[tuple[str, str], Scope | None]:
    """(method, path) -> the scope it needs; None for a route without `Authorize`."""
    scopes: dict[tuple[str, str], Scope | None] = {}
    for route in iter_route_contexts(app.routes):
        dependant = getattr(route, "dependant", None)
        guards = [] if dependant is None else [
            call for call in _calls(dependant) if isinstance(call, Authorize)
        ]  # fmt: skip
        for method in sorted(route.methods or {"*"}):
            if method == "HEAD" and "GET" in (route.methods or ()):
                continue
            needed = [g.scope or scope_for_method(method) for g in guards]
            rank = {"read": 0, "write": 1, "admin": 2}
            scopes[(method, str(route.path))] = max(needed, key=rank.__getitem__, default=None)
    return scopes
