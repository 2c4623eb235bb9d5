"""Serving an app on a thread of another program (``cli/serving.py``), as the demo and tests do."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from layerwatch_server.cli.serving import serve_in_thread
from layerwatch_server.config import Settings
from layerwatch_server.main import create_app


def test_the_url_answers_once_ready_and_not_after_the_block(tmp_path: Path) -> None:
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'served.db'}"))
    with serve_in_thread(app) as url:
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{url}/readyz", timeout=10).json()["status"] == "ok"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz", timeout=2)
