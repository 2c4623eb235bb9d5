"""The browser dashboard served at ``/``: Jinja2 page shells, vendored scripts, a login.

Pages (`pages`) read through the JSON API under ``/api/v1``; nothing here
queries the database but the login (`login`). Static files ship in the wheel
and work offline: no CDN, no build step.
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from layerwatch_server.dashboard import login, pages
from layerwatch_server.dashboard.templating import STATIC

__all__ = ["install"]


def install(app: FastAPI) -> None:
    """Add the dashboard's pages, login and static files to `app`."""
    app.include_router(login.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(pages.LoginRequired)
    async def _to_login(_: Request, error: pages.LoginRequired) -> RedirectResponse:
        return RedirectResponse(f"/login?next={quote(error.target, safe='')}", status_code=303)
