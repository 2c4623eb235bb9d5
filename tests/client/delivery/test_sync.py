"""`layerwatch sync` against the fake server: replay, splits, status, skips and failures."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from layerwatch import wire
from layerwatch.delivery.spool.base import Outgoing
from layerwatch.delivery.spool.disk import DiskSpool, open_run_spool
from layerwatch.delivery.sync import sync_spools

if TYPE_CHECKING:
    from tests.client.conftest import FakeServer

SERVER = "http://layerwatch.test"


def leave_spool(
    root: Path, run_id: str, batches: int, *, status: wire.RunStatus | None = None
) -> Path:
    """What a process killed (or finished while the server was away) leaves behind."""
    run = wire.RunCreate(id=run_id, project="sync")
    spool = open_run_spool(root, server=SERVER, run=run, max_bytes=1 << 20)
    for i in range(batches):
        steps = [2 * i, 2 * i + 1]
        scalars = wire.Scalars(name="loss", steps=steps, values=[1.0 / (s + 1) for s in steps])
        spool.push(Outgoing(i + 1, wire.Batch(batch_id=f"{run_id}-{i}", scalars=[scalars]), 2))
    spool.close(status)
    return spool.directory


def sync(root: Path, server: FakeServer, **kwargs: object) -> tuple[int, list[str]]:
    lines: list[str] = []
    with server.client() as http:
        code = sync_spools(root, http=http, echo=lines.append, **kwargs)  # type: ignore[arg-type]
    return code, lines


def test_sync_sends_what_a_run_left_and_sets_its_status(server: FakeServer, tmp_path: Path) -> None:
    directory = leave_spool(tmp_path, "r1", 3, status="finished")
    code, lines = sync(tmp_path, server)
    assert code == 0
    assert lines == ["run r1: 6 records sent"]
    assert server.scalars() == {"loss": {s: 1.0 / (s + 1) for s in range(6)}}
    assert list(server.runs) == ["r1"]  # created when its first batch got 404
    assert server.statuses == {"r1": "finished"}
    assert not directory.exists()
    assert sync(tmp_path, server) == (0, [f"nothing to sync in {tmp_path}"])


def test_sync_leaves_a_finished_run_finished(server: FakeServer, tmp_path: Path) -> None:
    leave_spool(tmp_path, "r1", 1)  # killed after it marked the run finished
    server.runs["r1"] = wire.RunCreate(id="r1", project="sync")
    server.statuses["r1"] = "finished"
    assert sync(tmp_path, server)[0] == 0
    assert [r.url.path for r in server.requests] == ["/api/v1/runs/r1/batches"]
    # no POST /runs: resuming the run would have set it running again
    assert server.statuses == {"r1": "finished"}


def test_sync_splits_batches_the_server_finds_too_large(server: FakeServer, tmp_path: Path) -> None:
    run = wire.RunCreate(id="big", project="sync")
    spool = open_run_spool(tmp_path, server=SERVER, run=run, max_bytes=1 << 20)
    scalars = wire.Scalars(name="x", steps=list(range(64)), values=[float(s) for s in range(64)])
    spool.push(Outgoing(1, wire.Batch(batch_id="whole", scalars=[scalars]), 64))
    spool.close()
    server.max_body = 300
    code, lines = sync(tmp_path, server)
    assert (code, lines) == (0, ["run big: 64 records sent"])
    assert server.scalars() == {"x": {s: float(s) for s in range(64)}}
    assert len(server.batches) > 2


def test_sync_keeps_the_spool_when_the_server_is_away(server: FakeServer, tmp_path: Path) -> None:
    directory = leave_spool(tmp_path, "r1", 2)
    server.down = True
    code, lines = sync(tmp_path, server, timeout=0.2)
    assert code == 1
    assert lines == [f"run r1: 0 records sent, 4 still spooled in {directory}"]
    spool = DiskSpool(directory)
    assert len(spool) == 2
    spool.close()
    server.down = False
    assert sync(tmp_path, server) == (0, ["run r1: 4 records sent"])
    assert len(server.batches) == 2


def test_sync_reports_batches_the_server_refuses(server: FakeServer, tmp_path: Path) -> None:
    directory = leave_spool(tmp_path, "r1", 2)
    server.runs["r1"] = wire.RunCreate(id="r1", project="sync")
    server.fail("batches", httpx.Response(409, json={"detail": "contradicts stored data"}))
    code, lines = sync(tmp_path, server)
    assert code == 1
    assert lines == ["run r1: 2 records sent, 2 refused by the server"]
    assert not directory.exists()  # refused for good: sending it again would not help


def test_sync_skips_spools_in_use_and_picks_runs(server: FakeServer, tmp_path: Path) -> None:
    busy = leave_spool(tmp_path, "busy", 1)
    leave_spool(tmp_path, "other", 1)
    held = DiskSpool(busy)  # a live process still writes it
    try:
        code, lines = sync(tmp_path, server, run_id="busy")
    finally:
        held.close()
    assert code == 0
    assert lines == [f"run busy: skipped, its process is still running ({busy})"]
    assert server.batches == {}
    assert sync(tmp_path, server, run_id="other") == (0, ["run other: 2 records sent"])
    assert busy.exists()


def test_sync_cannot_place_a_spool_without_run_json(server: FakeServer, tmp_path: Path) -> None:
    directory = leave_spool(tmp_path, "r1", 1)
    (directory / "run.json").unlink()
    code, lines = sync(tmp_path, server)
    assert code == 1
    assert lines == [f"{directory}: no readable run.json; cannot tell which run it belongs to"]
    assert directory.exists()


def test_sync_removes_a_spool_killed_before_it_held_anything(
    server: FakeServer, tmp_path: Path
) -> None:
    directory = tmp_path / "r1"
    directory.mkdir()  # killed between making its folder and writing run.json
    assert sync(tmp_path, server) == (0, [f"{directory}: nothing to send"])
    assert not directory.exists()
    assert server.requests == []


@pytest.mark.parametrize("argv", [["sync", "--help"]])
def test_sync_is_a_subcommand(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from layerwatch_server.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    assert "--spool-dir" in capsys.readouterr().out
