"""The dashboard's login: a token typed once, kept in an HttpOnly, SameSite=Strict cookie.

The cookie holds the token itself (scripts cannot read it, other sites cannot
send it) and authorizes reads only (`api.auth.presented_secret`): the pages
never write. The login and logout forms carry a double-submit CSRF value and
must come from this origin, so another site can neither log a browser out nor
into someone else's token. No token ever appears in a URL or in a page.
"""

from __future__ import annotations

import hmac
import secrets
from datetime import datetime, timezone
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from layerwatch_server.api.auth import SESSION_COOKIE, is_authenticated
from layerwatch_server.dashboard.templating import render
from layerwatch_server.db import managed_session
from layerwatch_server.store import tokens

CSRF_COOKIE = "layerwatch_csrf"
MAX_FORM_BYTES = 4096
SESSION_SECONDS = 30 * 24 * 3600
"""How long the browser keeps the cookie, at most: a token that expires sooner ends it sooner."""

router = APIRouter(include_in_schema=False)


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path on this server, never another site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _login_page(
    request: Request, target: str | None, error: str | None = None, status: int = 200
) -> Response:
    csrf = secrets.token_urlsafe(32)
    context = {"csrf": csrf, "next": safe_next(target), "error": error}
    page = render(request, "login.html", context, status=status)
    page.set_cookie(
        CSRF_COOKIE, csrf, httponly=True, samesite="strict", path="/login",
        secure=request.url.scheme == "https",
    )  # fmt: skip
    return page


@router.get("/login")
def login_form(request: Request) -> Response:
    return _login_page(request, request.query_params.get("next"))


def _same_origin(request: Request) -> bool:
    """A form post from a page of this server: its Origin (or Referer) names this host."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source:
        return False
    parts = urlsplit(source)
    return parts.netloc == request.headers.get("host") and parts.scheme == request.url.scheme


async def _form(request: Request) -> dict[str, str] | None:
    """The url-encoded form, or None when it is too large or not a form."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    try:
        fields = parse_qs(body.decode(), max_num_fields=8)
    except (UnicodeDecodeError, ValueError):
        return None
    return {key: values[0] for key, values in fields.items()}


def _csrf_ok(request: Request, form: dict[str, str]) -> bool:
    cookie = request.cookies.get(CSRF_COOKIE, "")
    return (
        _same_origin(request) and bool(cookie) and hmac.compare_digest(cookie, form.get("csrf", ""))
    )


@router.post("/login")
async def login(request: Request) -> Response:
    form = await _form(request)
    if form is None or not _csrf_ok(request, form):
        error = "The form expired or came from elsewhere; try again."
        return _login_page(request, form.get("next") if form else None, error, 403)
    target = safe_next(form.get("next"))
    secret = form.get("token", "").strip()
    with managed_session(request.app.state.read_sessions) as session:
        token = tokens.find_token(session, secret) if secret else None
        expires = token.expires_at if token is not None else None
    if token is None:  # the form again, with a message: a page, not an API refusal
        return _login_page(request, target, "That token is unknown, expired or revoked.")
    age = SESSION_SECONDS
    if expires is not None:
        moment = expires if expires.tzinfo else expires.replace(tzinfo=timezone.utc)
        age = max(0, min(age, int((moment - datetime.now(timezone.utc)).total_seconds())))
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE, secret, max_age=age, httponly=True, samesite="strict", path="/",
        secure=request.url.scheme == "https",
    )  # fmt: skip
    response.delete_cookie(CSRF_COOKIE, path="/login")
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    # Only this server's own pages may log a browser out; no form value is needed:
    # SameSite=Strict keeps the cookie off other sites' requests anyway.
    if not _same_origin(request):
        return Response("logout must come from this server's pages", status_code=403)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def signed_in(request: Request) -> bool:
    """Whether the page request may be shown (a live token, or an open server)."""
    return is_authenticated(request)
