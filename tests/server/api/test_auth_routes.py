"""Deny by default: every route of the app needs a token, but an explicit allowlist.

A route added later, to any router, is caught here if it can be reached
without the `Authorize` dependency.
"""

from __future__ import annotations

from route_table import PUBLIC, route_scopes

from layerwatch_server.config import Settings
from layerwatch_server.main import create_app


def test_every_route_but_the_allowlist_needs_a_token() -> None:
    scopes = route_scopes(create_app(Settings(), migrate=False))

    unguarded = {path for (_, path), scope in scopes.items() if scope is None}
    assert unguarded == PUBLIC
    assert len(scopes) > 50  # the app's routes were found, not an empty list


def test_writes_need_write_and_tokens_need_admin() -> None:
    scopes = route_scopes(create_app(Settings(), migrate=False))

    for (method, path), scope in scopes.items():
        if path in PUBLIC:
            continue
        if path.startswith("/api/v1/tokens"):
            assert scope == "admin", (method, path)
        elif method in ("GET", "HEAD"):
            assert scope == "read", (method, path)
        else:
            assert scope == "write", (method, path)
