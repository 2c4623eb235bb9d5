"""Jinja2 pages of the dashboard, with the headers every page gets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

HERE = Path(__file__).parent
STATIC = HERE / "static"
templates = Jinja2Templates(directory=HERE / "templates")

# Scripts only from this server, never inline: an injected string cannot run.
# uPlot positions its elements with inline styles, hence style-src 'unsafe-inline'.
POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'"
)


def render(request: Request, name: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
    page = templates.TemplateResponse(request, name, context, status_code=status)
    page.headers["Content-Security-Policy"] = POLICY
    page.headers["X-Content-Type-Options"] = "nosniff"
    page.headers["Referrer-Policy"] = "same-origin"
    page.headers["Cache-Control"] = "no-store"
    return page
