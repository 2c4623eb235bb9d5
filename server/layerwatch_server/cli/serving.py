"""Running the server inside another program: the demo, a notebook, the tests."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI


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
