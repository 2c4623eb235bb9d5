"""Serving: ``layerwatch server`` (one process or several workers), and serving inside
another program (the demo, a notebook, the tests).

Several workers are uvicorn's own (``uvicorn.run(..., workers=N)``): a
supervisor process that starts N worker processes sharing one listening
socket, and restarts any that dies. It needs nothing beyond uvicorn, which
the server already depends on; gunicorn would add a dependency and its own
configuration for the same job. Each worker builds its app with
`worker_app` from the ``LAYERWATCH_*`` environment the command line exports.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI
from sqlalchemy.exc import SQLAlchemyError

from layerwatch_server.config import Settings
from layerwatch_server.db import make_engine, make_sessionmakers, managed_session
from layerwatch_server.main import create_app
from layerwatch_server.migrate import upgrade_database
from layerwatch_server.store.tokens import any_tokens

CREATE_TOKEN_HINT = "layerwatch token create NAME --scope admin"


def _tokens_exist(settings: Settings, *, migrate: bool) -> bool:
    """Upgrade the database (once, before any worker starts) and say whether tokens exist."""
    engine = make_engine(
        settings.resolved_database_url, sqlite_busy_timeout_ms=settings.sqlite_busy_timeout_ms
    )
    try:
        if migrate:
            upgrade_database(engine)
        read, _ = make_sessionmakers(engine)
        with managed_session(read) as session:
            return any_tokens(session)
    except SQLAlchemyError:  # not migrated (--no-migrate): /readyz will say so
        return False
    finally:
        engine.dispose()


def run_server(
    settings: Settings,
    *,
    host: str,
    port: int,
    workers: int = 1,
    migrate: bool = True,
    log_level: str = "info",
    safe_url: str = "",
) -> int:
    """Check that serving is safe, say how it is served, then serve until interrupted.

    With no token in the database the server runs open only when
    ``settings.allow_open`` (a loopback bind, or ``--insecure``); otherwise it
    refuses to start, saying how to create a token.
    """
    exist = _tokens_exist(settings, migrate=migrate)
    where = f"http://{host}:{port}"
    if not exist and not settings.allow_open:
        print(
            f"layerwatch server: refusing to serve {where} without authentication: no API "
            f"token exists. Create one on this host with\n\n    {CREATE_TOKEN_HINT}"
            + _database_option(settings, safe_url)
            + "\n\nand set it as LAYERWATCH_TOKEN where clients run; or pass --insecure to "
            "serve anyone who can reach this address.",
            file=sys.stderr,
        )
        return 2
    if exist:
        mode = "authentication on: every API request needs a token"
    else:
        mode = (
            f"OPEN: no API token exists, so anyone who can reach {where} may read and write; "
            f"`{CREATE_TOKEN_HINT}` turns authentication on"
        )
    print(f"layerwatch server on {where} ({safe_url}); {mode}", flush=True)
    if workers <= 1:
        app = create_app(settings, migrate=False)
        uvicorn.run(app, host=host, port=port, log_level=log_level)
        return 0
    os.environ.update(_environment(settings))
    uvicorn.run(
        "layerwatch_server.cli.serving:worker_app", factory=True, host=host, port=port,
        workers=workers, log_level=log_level,
    )  # fmt: skip
    return 0


def _database_option(settings: Settings, safe_url: str) -> str:
    if settings.database_url:
        return f" --database-url '{safe_url}'"
    if settings.data_dir != Settings.model_fields["data_dir"].default:
        return f" --data-dir '{settings.data_dir}'"
    return ""


def _environment(settings: Settings) -> dict[str, str]:
    """The settings the command line chose, for worker processes to read back."""
    return {
        "LAYERWATCH_DATABASE_URL": settings.resolved_database_url,
        "LAYERWATCH_ALLOW_OPEN": "1" if settings.allow_open else "0",
        "LAYERWATCH_ALLOWED_HOSTS": ",".join(settings.allowed_hosts),
        "LAYERWATCH_CORS_ORIGINS": ",".join(settings.cors_origins),
    }


def worker_app() -> FastAPI:
    """The app of one worker process; the command line has migrated the database already."""
    return create_app(Settings(), migrate=False)


@contextmanager
def serve_in_thread(
    app: FastAPI, *, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0
) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a background thread; yield its base URL once ready.

    ``port=0`` binds a free port. The URL is yielded once ``/readyz`` answers
    200 (the database is migrated); leaving the block shuts the server down,
    running the app's shutdown.
    """
    config = uvicorn.Config(
        app, host=host, port=port, lifespan="on", ws="none", log_config=None,
        log_level="warning", access_log=False,
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="layerwatch-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the server failed to start; see the log above")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server did not start in {timeout} s")
            time.sleep(0.01)
        bound = server.servers[0].sockets[0].getsockname()[1]
        url = f"http://{host}:{bound}"
        while not _ready(url):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url}/readyz did not answer 200 in {timeout} s")
            time.sleep(0.02)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError("the server did not shut down")


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False
