"""Liveness, readiness and the API docs of a real server, over TCP, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from auth_headers import auth_headers
from layerwatch_server.config import Settings
from layerwatch_server.main import create_app


def test_health_and_readiness(live_server: str, backend: str) -> None:
    with httpx.Client(headers=auth_headers(), base_url=live_server) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        ready = http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {
            "status": "ok",
            "database": "sqlite" if backend == "sqlite" else "postgresql",
        }


def test_docs_and_openapi_render(live_server: str) -> None:
    with httpx.Client(headers=auth_headers(), base_url=live_server) as http:
        docs = http.get("/docs")
        assert docs.status_code == 200
        assert "text/html" in docs.headers["content-type"]
        assert "swagger" in docs.text.lower()
        spec = http.get("/openapi.json").raise_for_status().json()
    assert spec["info"]["title"] == "layerwatch"
    ingest = spec["paths"]["/api/v1/runs/{run_id}/batches"]["post"]
    schema = ingest["requestBody"]["content"]["application/json"]["schema"]
    assert "batch_id" in schema["properties"]
    assert {"/api/v1/runs", "/api/v1/runs/{run_id}/plots/series.png"} <= set(spec["paths"])


def test_an_unmigrated_database_is_not_ready(tmp_path: Path) -> None:
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'empty.db'}"), migrate=False)

    async def ask() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/readyz")

    ready = asyncio.run(ask())
    assert ready.status_code == 503
    assert ready.json() == {
        "status": "unavailable",
        "detail": "schema is not migrated",
        "code": "unavailable",
    }
