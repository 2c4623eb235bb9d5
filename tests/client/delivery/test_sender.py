from __future__ import annotations

import gzip
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import torch
from torch import nn

import layerwatch
from layerwatch import wire
from layerwatch.delivery.pipeline import Delivery
from layerwatch.delivery.queue import Buffer
from layerwatch.delivery.spool.base import Outgoing
from layerwatch.delivery.spool.disk import DiskSpool
from layerwatch.delivery.sync import sync_spools
from layerwatch.errors import SpoolLockedError

if TYPE_CHECKING:
    from tests.client.conftest import FakeServer

MakeRun = Callable[..., layerwatch.Run]


def posted_ids(server: FakeServer) -> list[str]:
    ids = []
    for request in server.batch_posts():
        body = request.content
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        ids.append(json.loads(body)["batch_id"])
    return ids


def test_records_are_grouped_into_columnar_blocks(server: FakeServer, make_run: MakeRun) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh())
    run = make_run(every=1, flush_secs=60)  # only flush() sends
    run.watch(model, weights=False, gradients=False)
    for step in range(4):
        model(torch.randn(2, 3, requires_grad=True))
        run.log({"loss": 1.0 / (step + 1), "acc": step / 4})
        run.step()
    assert run.flush(5)
    [batch] = server.batches.values()
    assert sorted((s.name, s.kind) for s in batch.stats) == [
        ("0", "activation"), ("1", "activation")
    ]  # fmt: skip
    for block in batch.stats:
        assert block.steps == [0, 1, 2, 3]
        assert all(len(getattr(block, stat)) == 4 for stat in wire.STAT_NAMES)
        assert block.numel == [8, 8, 8, 8]
    loss = next(s for s in batch.scalars if s.name == "loss")
    assert loss.steps == [0, 1, 2, 3]
    assert loss.values == pytest.approx([1, 1 / 2, 1 / 3, 1 / 4])
    assert loss.times is not None
    assert len(loss.times) == 4
    assert batch.rank == 0
    assert run.counters.sent == 8 * 3 + 8 + 1  # stats, histograms, unit means; scalars; tree


def test_batches_hold_at_most_batch_size_records(server: FakeServer, make_run: MakeRun) -> None:
    run = make_run(batch_size=4, flush_secs=60)
    for step in range(10):
        run.log({"x": float(step)}, step=step)
    assert run.flush(5)
    sizes = [sum(len(s.steps) for s in b.scalars) for b in server.batches.values()]
    assert sum(sizes) == 10
    assert max(sizes) <= 4
    assert server.scalars()["x"] == {step: float(step) for step in range(10)}


def test_batches_are_sent_after_flush_secs(server: FakeServer, make_run: MakeRun) -> None:
    run = make_run(flush_secs=0.05)
    run.log({"x": 1.0})
    deadline = time.monotonic() + 5
    while not server.batches and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.scalars() == {"x": {0: 1.0}}


@pytest.mark.parametrize(
    "failure",
    [
        httpx.Response(503, headers={"Retry-After": "0"}),
        httpx.Response(429),
        httpx.Response(502),
        httpx.Response(504),
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
    ],
    ids=["503", "429", "502", "504", "connect", "timeout"],
)
def test_retryable_failures_resend_the_same_batch(
    server: FakeServer, make_run: MakeRun, failure: httpx.Response | Exception
) -> None:
    run = make_run()
    server.fail("batches", failure, failure)
    run.log({"loss": 0.25})
    assert run.flush(5)
    ids = posted_ids(server)
    assert len(ids) == 3
    assert len(set(ids)) == 1
    assert server.scalars() == {"loss": {0: 0.25}}
    assert run.counters.sent == 1
    assert run.counters.dropped == 0


def test_retry_after_is_honoured(server: FakeServer, make_run: MakeRun) -> None:
    run = make_run()
    server.fail("batches", httpx.Response(503, headers={"Retry-After": "0.3"}))
    run.log({"loss": 0.25})
    assert run.flush(5)
    first, second = server.batch_posts()
    assert second.extensions["received"] - first.extensions["received"] >= 0.29
    assert first.content == second.content


def test_validation_errors_are_not_retried(
    server: FakeServer, make_run: MakeRun, caplog: pytest.LogCaptureFixture
) -> None:
    run = make_run()
    server.fail("batches", httpx.Response(422, json={"detail": "bad"}))
    with caplog.at_level(logging.WARNING, logger="layerwatch"):
        run.log({"a": 1.0, "b": 2.0})
        assert run.flush(5)
        run.log({"a": 3.0}, step=1)  # later batches still go through
        assert run.flush(5)
    assert len(server.batch_posts()) == 2
    assert server.scalars() == {"a": {1: 3.0}}
    assert run.counters.dropped == 2
    assert run.counters.failed_batches == 1
    assert run.counters.sent == 1
    assert len([r for r in caplog.records if "422" in r.getMessage()]) == 1


@pytest.mark.parametrize("code", [400, 409, 422, 500])  # 401 and 403: see below
def test_other_errors_drop_the_batch(server: FakeServer, make_run: MakeRun, code: int) -> None:
    run = make_run()
    server.fail("batches", httpx.Response(code))
    run.log({"a": 1.0})
    assert run.flush(5)
    assert len(server.batch_posts()) == 1
    assert run.counters.failed_batches == 1


def test_too_large_batches_are_split(server: FakeServer, make_run: MakeRun) -> None:
    run = make_run(flush_secs=60)
    sizes = []
    for records in (16, 4):  # measure whole and quarter batches
        for step in range(records):
            run.log({"x": float(step)}, step=step)
        assert run.flush(5)
        sizes.append(len(server.batch_posts()[-1].content))
    per_record = (sizes[0] - sizes[1]) / 12
    server.batches.clear()
    server.requests.clear()
    server.max_body = int(sizes[1] + 2 * per_record)  # halves are too large; quarters pass
    for step in range(16):
        run.log({"x": float(step)}, step=step)
    assert run.flush(5)
    assert server.scalars()["x"] == {step: float(step) for step in range(16)}
    assert len(server.batches) == 4
    assert len(set(posted_ids(server))) == 1 + 2 + 4
    assert run.counters.dropped == 0
    assert run.counters.sent == 16 + 4 + 16


def test_a_single_record_too_large_is_dropped(server: FakeServer, make_run: MakeRun) -> None:
    server.max_body = 10
    run = make_run()
    run.log({"x": 1.0})
    assert run.flush(5)
    assert run.counters.dropped == 1
    assert run.counters.failed_batches == 1


def test_server_down_at_start(server: FakeServer, make_run: MakeRun) -> None:
    server.down = True
    started = time.perf_counter()
    run = make_run()
    assert time.perf_counter() - started < 1.0
    model = nn.Linear(2, 2)
    run.watch(model, every=1)
    model(torch.ones(1, 2, requires_grad=True))
    run.log({"loss": 1.0})
    assert not run.flush(0.2)  # nothing can be sent yet
    assert server.runs == {}
    server.down = False
    assert run.flush(5)
    assert list(server.runs) == [run.id]
    assert server.scalars() == {"loss": {0: 1.0}}
    assert ("Linear", "activation") in server.stats()


def test_network_failures_are_logged_once(
    server: FakeServer, make_run: MakeRun, caplog: pytest.LogCaptureFixture
) -> None:
    server.down = True
    with caplog.at_level(logging.WARNING, logger="layerwatch"):
        run = make_run()
        run.log({"loss": 1.0})
        assert not run.flush(0.2)
    failures = [r for r in caplog.records if "cannot deliver" in r.getMessage()]
    assert len(failures) == 1
    assert len(server.requests) > 3  # it kept retrying, quietly


def test_lost_run_is_created_again(server: FakeServer, make_run: MakeRun) -> None:
    run = make_run()
    run.log({"a": 1.0})
    assert run.flush(5)
    server.runs.clear()  # e.g. the server's database was reset
    run.log({"a": 2.0}, step=1)
    assert run.flush(5)
    assert list(server.runs) == [run.id]
    assert server.scalars() == {"a": {0: 1.0, 1: 2.0}}


def test_a_batch_gets_one_new_run_per_404(server: FakeServer, make_run: MakeRun) -> None:
    run = make_run()
    assert run.flush(5)
    missing = httpx.Response(404, json={"detail": "run not found", "code": "run_not_found"})
    server.fail("batches", missing, missing)
    run.log({"a": 1.0})
    assert run.flush(5)
    assert run.counters.failed_batches == 1
    run.log({"a": 2.0}, step=1)
    assert run.flush(5)
    assert server.scalars() == {"a": {1: 2.0}}
    assert len([r for r in server.requests if r.url.path == "/api/v1/runs"]) == 2


def test_refused_run_drops_its_data(
    server: FakeServer, make_run: MakeRun, caplog: pytest.LogCaptureFixture
) -> None:
    server.fail("runs", httpx.Response(409, json={"detail": "run belongs to another project"}))
    with caplog.at_level(logging.ERROR, logger="layerwatch"):
        run = make_run()
        run.log({"a": 1.0})
        assert run.flush(5)
    assert run.counters.dropped == 1
    assert server.batch_posts() == []
    assert any("refused to create run" in r.getMessage() for r in caplog.records)


def test_large_batches_are_gzipped(server: FakeServer, make_run: MakeRun) -> None:
    run = make_run(flush_secs=60)
    for step in range(1000):
        run.log({"x": step / 7}, step=step)
    assert run.flush(5)
    [request] = server.batch_posts()
    assert request.headers["Content-Encoding"] == "gzip"
    assert len(server.scalars()["x"]) == 1000


def test_full_queue_drops_and_counts(server: FakeServer, make_run: MakeRun) -> None:
    server.gate = threading.Event()  # the sender hangs in its first request
    run = make_run(max_queue=3)
    assert server.entered.wait(5)
    started = time.perf_counter()
    for step in range(10):
        run.log({"x": float(step)}, step=step)
    assert time.perf_counter() - started < 0.5  # never blocks
    assert run.counters.dropped == 7
    server.gate.set()
    assert run.flush(5)
    assert server.scalars() == {"x": {0: 0.0, 1: 1.0, 2: 2.0}}
    assert run.counters == type(run.counters)(sent=3, dropped=7, failed_batches=0)


def test_tensor_scalars_are_read_on_the_sender_thread(
    server: FakeServer, make_run: MakeRun
) -> None:
    run = make_run()
    loss = torch.tensor(0.5, requires_grad=True) * 2
    total = torch.zeros(())
    f64 = torch.tensor(0.1, dtype=torch.float64)
    run.log({"loss": loss, "total": total, "int": torch.tensor(3), "f64": f64})
    total += 100  # changed in place after logging: the logged value stays
    run.log({"vector": torch.ones(3), "word": "hello"})  # type: ignore[dict-item]
    assert run.flush(5)
    assert server.scalars() == {
        "loss": {0: 1.0}, "total": {0: 0.0}, "int": {0: 3.0}, "f64": {0: 0.1}
    }  # fmt: skip


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_batches_wait_on_disk_while_the_server_is_down(
    server: FakeServer, make_run: MakeRun, tmp_path: Path
) -> None:
    server.down = True
    run = make_run(spool_dir=tmp_path, batch_size=3)
    model = nn.Linear(2, 2)
    run.watch(model, every=1, weights=False, gradients=False, histograms=None, unit_means=False)
    for step in range(4):
        model(torch.ones(1, 2, requires_grad=True))
        run.log({"loss": float(step)})
        run.step()
    wait_for(lambda: run.counters.spooled == 9)  # 4 statistics, 4 scalars, the model tree
    directory = tmp_path / run.id
    assert list(directory.glob("*.seg"))
    with pytest.raises(SpoolLockedError):  # the run's sender owns it
        DiskSpool(directory)
    assert run.counters.dropped == 0
    server.down = False
    assert run.flush(5)
    assert run.counters == type(run.counters)(sent=9, dropped=0, failed_batches=0, spooled=0)
    assert server.scalars() == {"loss": {0: 0.0, 1: 1.0, 2: 2.0, 3: 3.0}}
    assert sorted(server.stats()[("Linear", "activation")]) == [0, 1, 2, 3]
    assert list(directory.glob("*.seg")) == []  # delivered: nothing left to replay
    ids = posted_ids(server)
    assert sorted(set(ids)) == sorted(server.batches)  # retries only resent the same ids


def test_batches_a_killed_process_left_are_sent_first(
    server: FakeServer, make_run: MakeRun, tmp_path: Path
) -> None:
    left = DiskSpool(tmp_path / "resumed")
    scalars = wire.Scalars(name="loss", steps=[0, 1], values=[2.0, 1.5])
    left.push(Outgoing(1, wire.Batch(batch_id="left-behind", scalars=[scalars]), 2))
    left.close()
    run = make_run(id="resumed", spool_dir=tmp_path)
    run.log({"loss": 1.0}, step=2)
    assert run.flush(5)
    assert posted_ids(server)[0] == "left-behind"
    assert server.scalars() == {"loss": {0: 2.0, 1: 1.5, 2: 1.0}}
    assert run.counters.sent == 3
    run.close()
    assert not (tmp_path / "resumed").exists()


def test_an_unusable_spool_dir_keeps_batches_in_memory(
    server: FakeServer, make_run: MakeRun, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with caplog.at_level(logging.WARNING, logger="layerwatch"):
        run = make_run(spool_dir=not_a_folder)
        run.log({"a": 1.0})
        assert run.flush(5)
    assert server.scalars() == {"a": {0: 1.0}}
    assert any("cannot use the on-disk spool" in r.getMessage() for r in caplog.records)


def test_an_unreachable_server_is_asked_readyz_not_sent_the_batch_again(
    server: FakeServer, make_run: MakeRun
) -> None:
    run = make_run(backoff=0.01)
    assert run.flush(5)
    server.down = True
    run.log({"loss": 1.0})
    time.sleep(2.5)  # a few polls, each about a second apart
    down = [r.url.path for r in server.requests]
    assert down.count("/readyz") >= 2
    assert down.count(f"/api/v1/runs/{run.id}/batches") == 1  # the batch was tried once
    server.down = False
    back = time.monotonic()
    assert run.flush(5)
    assert time.monotonic() - back < 2.0  # drained within about a poll of the return
    assert server.scalars() == {"loss": {0: 1.0}}


def test_records_reach_the_spool_while_a_request_hangs(
    server: FakeServer, make_run: MakeRun, tmp_path: Path
) -> None:
    run = make_run(max_queue=20, batch_size=5, spool_dir=tmp_path)
    assert run.flush(5)
    server.gate = threading.Event()  # every request waits here
    server.entered.clear()
    run.log({"loss": 0.0})
    assert server.entered.wait(5)  # a request is in flight, and hangs
    for step in range(1, 200):  # ten times what the queue holds
        run.log({"loss": float(step)}, step=step)
        time.sleep(0.001)
    deadline = time.monotonic() + 5
    while run.counters.spooled < 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert run.counters.dropped == 0
    assert run.counters.spooled == 200  # on disk, though nothing was answered
    server.gate.set()
    assert run.flush(5)
    assert server.scalars() == {"loss": {step: float(step) for step in range(200)}}
    assert run.counters.spooled == 0


def test_an_idle_run_sends_heartbeats(server: FakeServer) -> None:
    run = wire.RunCreate(id="beating", project="p")
    buffer = Buffer(10)
    delivery = Delivery(
        http=server.client(), server="http://layerwatch.test", run=run, buffer=buffer,
        tensors={}, flush_secs=0.01, batch_size=10, backoff=0.01, heartbeat_secs=0.2,
    )  # fmt: skip
    delivery.start()
    try:
        time.sleep(1.3)
    finally:
        delivery.stop("finished", 5)
    assert list(server.runs) == ["beating"]
    assert 3 <= len(server.heartbeats) <= 7
    gaps = [b - a for a, b in itertools.pairwise(server.heartbeats)]
    assert min(gaps) >= 0.15


def test_a_heartbeat_for_a_lost_run_creates_it_again(server: FakeServer) -> None:
    run = wire.RunCreate(id="lost", project="p")
    delivery = Delivery(
        http=server.client(), server="http://layerwatch.test", run=run, buffer=Buffer(10),
        tensors={}, flush_secs=0.01, batch_size=10, backoff=0.01, heartbeat_secs=0.1,
    )  # fmt: skip
    delivery.start()
    try:
        deadline = time.monotonic() + 5
        while "lost" not in server.runs and time.monotonic() < deadline:
            time.sleep(0.01)
        server.runs.clear()  # e.g. the server's database was reset
        time.sleep(0.5)
    finally:
        delivery.stop("finished", 5)
    assert list(server.runs) == ["lost"]
    assert server.statuses == {"lost": "finished"}


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_token_stops_sending_and_keeps_everything_for_sync(
    server: FakeServer,
    make_run: MakeRun,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    status: int,
) -> None:
    run = make_run(spool_dir=tmp_path, batch_size=2)
    assert run.flush(5)
    code = "unauthorized" if status == 401 else "forbidden"
    denied = httpx.Response(status, json={"detail": "no", "code": code})
    server.fail("batches", *[denied] * 50)
    with caplog.at_level(logging.ERROR, logger="layerwatch"):
        for step in range(6):
            run.log({"loss": float(step)}, step=step)  # training goes on, nothing raises
        assert not run.flush(0.5)
        time.sleep(0.3)
    posts = len(server.batch_posts())
    assert posts == 1  # asked once, then it stopped
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert f"refused the token for run {run.id} ({status} {code})" in errors[0]
    assert "layerwatch sync" in errors[0]
    run.finish(timeout=1)
    assert run.counters.dropped == 0
    assert run.counters.spooled == 6
    assert server.scalars() == {}
    server.failures["batches"].clear()  # the right token now
    assert sync_spools(tmp_path, http=server.client(), echo=lambda line: None) == 0
    assert server.scalars() == {"loss": {step: float(step) for step in range(6)}}
    assert server.statuses == {run.id: "finished"}
