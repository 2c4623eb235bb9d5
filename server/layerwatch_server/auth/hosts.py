"""The Host-header allowlist, against DNS rebinding, and what counts as a loopback bind.

A page on ``evil.example`` whose name is made to resolve to 127.0.0.1 can
reach a server on the loopback address from the victim's browser; its
requests still say ``Host: evil.example``. A server on a loopback bind
therefore answers only to loopback names by default. Health checks are
exempt: they reveal nothing, and orchestrators probe by address.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from layerwatch_server.errors import INVALID_HOST

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
_EXEMPT_PATHS = frozenset({"/healthz", "/readyz"})


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves only this machine."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """The name in a Host header, without its port: ``[::1]:8000`` -> ``::1``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def host_allowed(header: str, allowed: Iterable[str]) -> bool:
    """Whether the Host header names an allowed host; ``*.example.com`` matches subdomains."""
    name = _host_name(header)
    for pattern in allowed:
        pattern = pattern.strip().lower()
        if pattern == "*" or pattern == name:
            return True
        if pattern.startswith("*.") and name.endswith(pattern[1:]):
            return True
    return False


class HostAllowlist:
    """ASGI middleware answering 400 ``invalid_host`` to a Host outside ``allowed``."""

    def __init__(self, app: ASGIApp, allowed: Iterable[str]) -> None:
        self.app = app
        self.allowed = tuple(allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").decode("latin-1")
        if host_allowed(host, self.allowed):
            await self.app(scope, receive, send)
            return
        body = json.dumps(
            {"detail": "this Host is not served here (see --allowed-hosts)", "code": INVALID_HOST}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 400,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
