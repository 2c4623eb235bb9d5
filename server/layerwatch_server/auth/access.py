"""What one request may do: the token's scope and the projects it covers."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal, get_args

Scope = Literal["read", "write", "admin"]
SCOPES: tuple[Scope, ...] = get_args(Scope)
_RANK = {scope: rank for rank, scope in enumerate(SCOPES)}


def scope_for_method(method: str) -> Scope:
    """The scope a route needs unless it says otherwise: reads read, anything else writes."""
    return "read" if method.upper() in ("GET", "HEAD", "OPTIONS") else "write"


@dataclass(frozen=True)
class Access:
    """The identity behind a request.

    ``token_id`` and ``name`` are None when the server runs open (no token
    exists yet on a loopback bind, or ``--insecure``); ``projects`` None
    means every project.
    """

    scope: Scope
    projects: frozenset[str] | None = None
    token_id: int | None = None
    name: str | None = None

    def allows(self, needed: Scope) -> bool:
        return _RANK[self.scope] >= _RANK[needed]

    def covers(self, project: str) -> bool:
        return self.projects is None or project in self.projects

    @property
    def readable_projects(self) -> Collection[str] | None:
        """The projects listings may show; None: all of them."""
        return self.projects


OPEN = Access(scope="admin")
"""A server without tokens on a loopback bind (or ``--insecure``): everything is allowed."""
