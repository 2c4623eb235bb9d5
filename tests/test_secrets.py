"""A canary token through real traffic never shows up in logs, answers, the database or spools.

The canary is used by a real training run (`layerwatch.Run`), `layerwatch.Api`
and plain requests, and offered in wrong forms; then every log record (SQL
statements with their parameters included), every answer, every row of
every table (and, on SQLite, the database files) and the client's spool
are searched for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest
import torch
from sqlalchemy import select
from torch import nn

import layerwatch
from layerwatch_server.config import Settings
from layerwatch_server.db import make_engine, make_sessionmakers, managed_session
from layerwatch_server.migrate import upgrade_database
from layerwatch_server.models import Base
from layerwatch_server.store.tokens import create_token


def _train(server: str) -> str:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with layerwatch.Run(server, project="canary", name="canary-run") as run:
        run.watch(model, optimizer, every=1)
        for _ in range(5):
            loss = model(torch.randn(16, 4)).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            run.log({"loss": loss.detach()})
            optimizer.step()
        return run.id


def test_a_canary_token_appears_nowhere(
    empty_database_url: str,
    serve: Callable[[Settings], AbstractContextManager[str]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    spool_root: Path,
) -> None:
    engine = make_engine(empty_database_url)
    upgrade_database(engine)
    read, write = make_sessionmakers(engine)
    with managed_session(write) as session:
        canary = create_token(session, name="canary", scope="admin").secret
    monkeypatch.setenv("LAYERWATCH_TOKEN", canary)
    caplog.set_level(logging.DEBUG)
    logging.getLogger("sqlalchemy.engine").setLevel(logging.INFO)  # statements and parameters
    answers: list[str] = []
    try:
        with serve(Settings(database_url=empty_database_url)) as url:
            run_id = _train(url)
            with layerwatch.Api(url) as api:
                assert api.run(run_id).name == "canary-run"
                api.run(run_id).series("0", stat="std")
            with httpx.Client(base_url=f"{url}/api/v1", timeout=10) as http:
                for authorization in (
                    f"Bearer {canary}",
                    f"Bearer {canary[:-1]}x",  # wrong
                    f"Bearer {canary}x",  # malformed
                    f"Basic {canary}",
                    f"Bearer {canary} {canary}",
                ):
                    headers = {"Authorization": authorization}
                    for response in (
                        http.get("/runs", headers=headers),
                        http.get("/runs/none", headers=headers),
                        http.post("/runs", content=b"{", headers=headers),
                        http.get("/tokens", headers=headers),
                        http.post(f"/runs/{run_id}/batches", content=b"[]", headers=headers),
                    ):
                        answers.append(str(response.headers) + response.text)
    finally:
        logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)

    captured = capfd.readouterr()
    assert canary not in caplog.text
    assert "canary-run" in caplog.text or "runs" in caplog.text  # the logs were captured
    assert canary not in captured.out + captured.err
    assert not [answer for answer in answers if canary in answer]
    with managed_session(read) as session:
        for table in Base.metadata.sorted_tables:
            for row in session.execute(select(table)):
                assert canary not in repr(tuple(row)), table.name
    engine.dispose()
    if empty_database_url.startswith("sqlite:///"):
        database = Path(empty_database_url.removeprefix("sqlite:///"))
        for path in database.parent.glob(database.name + "*"):
            assert canary.encode() not in path.read_bytes(), path
    for path in spool_root.rglob("*"):
        if path.is_file():
            assert canary.encode() not in path.read_bytes(), path
