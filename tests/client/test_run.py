from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import torch
from torch import nn

import layerwatch
from layerwatch.delivery.spool.disk import DiskSpool
from layerwatch.delivery.spool.files import read_spool_info
from layerwatch.errors import ConfigError, LayerwatchError, RunClosedError

if TYPE_CHECKING:
    from tests.client.conftest import FakeServer

MakeRun = Callable[..., layerwatch.Run]


def test_public_names() -> None:
    assert layerwatch.__all__ == [
        "Api",
        "ConfigError",
        "DeliveryError",
        "Histograms",
        "LayerwatchError",
        "NotFoundError",
        "PayloadTooLargeError",
        "Probe",
        "RejectedError",
        "RetryableError",
        "Run",
        "RunClosedError",
        "RunNotFoundError",
        "Watch",
        "__version__",
    ]
    assert isinstance(layerwatch.__version__, str)
    assert issubclass(ConfigError, ValueError)
    assert issubclass(ConfigError, LayerwatchError)


def test_import_is_light() -> None:
    code = (
        "import json, sys, layerwatch; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'torch', 'httpx', 'numpy', 'layerwatch_server', 'fastapi', 'sqlalchemy', "
        "'matplotlib'})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"every": 0},
        {"every": 2.5},
        {"id": "has space"},
        {"id": "-starts-with-dash"},
        {"id": "x" * 65},
        {"flush_secs": 0},
        {"max_queue": 0},
        {"max_queue": 0.5},
        {"batch_size": 0},
        {"backoff": "x"},
        {"timeout": float("nan")},
        {"timeout": -1},
        {"backoff": -1},
        {"server": "localhost:8000"},
        {"project": ""},
        {"name": "x" * 300},
        {"config": {"bad": object()}},
        {"tags": [1]},
        {"http": "not a client"},
        {"spool_dir": 3},
        {"max_spool_bytes": 0},
    ],
)
def test_bad_arguments_raise_at_construction(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        layerwatch.Run(**kwargs)


def test_run_creation_payload(server: FakeServer, make_run: MakeRun) -> None:
    run = make_run(
        project="digits", name="mlp", config={"lr": 0.1, "layers": [64, 32]},
        id="run-1", tags="baseline",
    )  # fmt: skip
    assert run.id == "run-1"
    assert run.flush(5)
    created = server.runs["run-1"]
    assert (created.project, created.name, created.tags) == ("digits", "mlp", ["baseline"])
    assert created.config == {"lr": 0.1, "layers": [64, 32]}
    assert created.host


def test_server_comes_from_argument_env_or_client(
    monkeypatch: pytest.MonkeyPatch, server: FakeServer
) -> None:
    monkeypatch.delenv("LAYERWATCH_SERVER", raising=False)
    with server.client() as http:
        runs = [layerwatch.Run(http=http)]
        monkeypatch.setenv("LAYERWATCH_SERVER", "http://env.test:1/")
        runs.append(layerwatch.Run(http=http))
        runs.append(layerwatch.Run("https://arg.test", http=http))
        assert [r.server for r in runs] == [
            "http://layerwatch.test", "http://env.test:1", "https://arg.test"
        ]  # fmt: skip
        for run in runs:
            run.close(timeout=1)
    monkeypatch.delenv("LAYERWATCH_SERVER")
    run = layerwatch.Run(timeout=0.2)
    assert run.server == layerwatch.run.DEFAULT_SERVER
    run.close(timeout=0.1)


def test_context_exit_finishes_the_run(server: FakeServer) -> None:
    http = server.client()
    with layerwatch.Run(http=http) as run:
        run.log({"a": 1.0})
    assert server.statuses == {run.id: "finished"}
    assert server.scalars() == {"a": {0: 1.0}}
    assert not http.is_closed  # an injected client belongs to the caller
    http.close()


def test_exception_marks_the_run_failed(server: FakeServer) -> None:
    runs: list[layerwatch.Run] = []

    def train(http: httpx.Client) -> None:
        with layerwatch.Run(http=http) as run:
            runs.append(run)
            run.log({"a": 1.0})
            raise KeyError("boom")

    with server.client() as http, pytest.raises(KeyError):
        train(http)
    assert server.statuses == {runs[0].id: "failed"}
    assert server.scalars() == {"a": {0: 1.0}}  # flushed all the same


def test_finish_with_a_status(server: FakeServer, make_run: MakeRun) -> None:
    run = make_run()
    assert run.finish("crashed")
    assert server.statuses == {run.id: "crashed"}


def test_close_is_idempotent_and_a_closed_run_raises(server: FakeServer, make_run: MakeRun) -> None:
    model = nn.Linear(2, 2)
    run = make_run()
    watch = run.watch(model)
    assert run.close() is True
    assert run.close() is True
    assert run.finish("failed") is True
    assert server.statuses == {run.id: "finished"}  # the first close decided
    assert run.closed
    assert not watch.active
    assert len([r for r in server.requests if r.method == "PATCH"]) == 1
    with pytest.raises(RunClosedError):
        run.log({"a": 1.0})
    with pytest.raises(RunClosedError):
        run.step()
    with pytest.raises(RunClosedError):
        run.watch(model)
    with pytest.raises(RunClosedError):
        run.flush()
    with pytest.raises(RunClosedError), run:
        pass
    watch.remove()  # still fine


def test_close_closes_the_client_it_made() -> None:
    run = layerwatch.Run("http://127.0.0.1:9", timeout=0.5, backoff=0.01)
    http = run._http
    run.close(timeout=0.1)
    assert http.is_closed


def test_one_summary_line(
    server: FakeServer, make_run: MakeRun, caplog: pytest.LogCaptureFixture
) -> None:
    run = make_run()
    server.fail("batches", httpx.Response(422))
    run.log({"a": 1.0, "b": 2.0})
    assert run.flush(5)
    run.log({"c": 3.0})
    with caplog.at_level(logging.INFO, logger="layerwatch"):
        run.close()
        run.close()
    [line] = [r for r in caplog.records if "records sent" in r.getMessage()]
    assert line.levelno == logging.WARNING  # something was dropped
    assert f"run {run.id} finished: 1 records sent, 0 spooled, 2 dropped (1 batches given up)" in (
        line.getMessage()
    )


def test_close_gives_up_after_its_timeout(
    server: FakeServer, make_run: MakeRun, caplog: pytest.LogCaptureFixture
) -> None:
    server.down = True
    run = make_run(spool_dir=None)  # memory only: what is left is dropped
    run.log({"a": 1.0})
    with caplog.at_level(logging.INFO, logger="layerwatch"):
        assert run.close(timeout=0.2) is False
    assert run.counters.dropped == 1
    assert any("timed out" in r.getMessage() for r in caplog.records)


def test_close_leaves_unsent_batches_on_disk(
    server: FakeServer, make_run: MakeRun, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.down = True
    run = make_run(spool_dir=tmp_path, flush_secs=60)
    run.log({"a": 1.0})
    assert not run.flush(0.1)  # sealed and spooled, not delivered
    run.log({"b": 2.0})  # still queued when closing: sealed onto the spool too
    with caplog.at_level(logging.INFO, logger="layerwatch"):
        assert run.close(timeout=0.2) is False
    assert run.counters == type(run.counters)(sent=0, dropped=0, failed_batches=0, spooled=2)
    [line] = [r.getMessage() for r in caplog.records if "records sent" in r.getMessage()]
    assert "0 records sent, 2 spooled, 0 dropped" in line
    assert f"`layerwatch sync --spool-dir {tmp_path}` sends the spooled ones" in line
    info = read_spool_info(tmp_path / run.id)
    assert info is not None
    assert (info.run.id, info.server, info.status) == (run.id, run.server, "finished")
    spool = DiskSpool(tmp_path / run.id)
    names = [spool.pop().batch.scalars[0].name for _ in range(len(spool))]
    assert names == ["a", "b"]
    spool.close()


def test_run_returns_at_once_when_the_server_is_unreachable(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.perf_counter()
    run = layerwatch.Run(f"http://127.0.0.1:{port}", spool_dir=tmp_path, backoff=0.01)
    assert time.perf_counter() - started < 1.5
    model = nn.Linear(2, 2)
    run.watch(model, every=1)
    step_started = time.perf_counter()
    model(torch.ones(1, 2, requires_grad=True))
    run.log({"loss": 1.0})
    run.step()
    assert time.perf_counter() - step_started < 0.5
    started = time.perf_counter()
    assert run.close(timeout=0.5) is False
    assert time.perf_counter() - started < 1.5 + 2.0  # the timeout, and a grace for the status
    # activation: stats, histogram, unit means; 2 weights: stats, histogram, change;
    # no gradient (no backward); the scalar; the model tree
    assert run.counters.spooled == 3 + 2 * 3 + 1 + 1
    assert run.counters.dropped == 0


def test_bad_log_values_are_skipped_not_raised(
    server: FakeServer, make_run: MakeRun, caplog: pytest.LogCaptureFixture
) -> None:
    run = make_run()
    with caplog.at_level(logging.WARNING, logger="layerwatch"):
        run.log({"text": "abc", "ok": 1.0})  # type: ignore[dict-item]
        run.log({"ok": 2.0}, step=-1)
        run.log({"x" * 300: 1.0})  # too long a name: dropped by the sender
    assert run.flush(5)
    assert server.scalars() == {"ok": {0: 1.0}}
    assert run.counters.dropped == 1
    assert len(caplog.records) == 3


def test_training_on_digits(server: FakeServer, make_run: MakeRun) -> None:
    """A real, if tiny, training loop: scikit-learn's bundled digits and an MLP."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16  # (1797, 64)
    y = torch.tensor(digits.target)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.CrossEntropyLoss()
    with make_run(project="digits", every=5) as run:
        watch = run.watch(model, optimizer, exclude="2")
        for epoch in range(2):
            model.train()
            for i in range(0, 1600, 80):
                loss = loss_fn(model(x[i : i + 80]), y[i : i + 80])
                loss.backward()
                run.log({"loss": loss.detach()})  # before the step it belongs to
                optimizer.step()
                optimizer.zero_grad()
            model.eval()
            with torch.no_grad():
                accuracy = (model(x[1600:]).argmax(-1) == y[1600:]).float().mean()
            run.log({"val_acc": accuracy, "epoch": epoch})
        assert run.current_step == 40
    assert watch.names == ("0", "1", "3")
    assert server.statuses == {run.id: "finished"}
    stats = server.stats()
    params = [f"{n}.{p}" for n in ("0", "3") for p in ("weight", "bias")]
    assert set(stats) == {("0", "activation"), ("1", "activation"), ("3", "activation")} | {
        (p, kind) for p in params for kind in ("weight", "grad")
    }
    assert all(sorted(per_step) == list(range(0, 40, 5)) for per_step in stats.values())
    relu = stats[("1", "activation")]
    assert all(row["min"] >= 0 and 0 < row["zero_frac"] < 1 for row in relu.values())
    assert all(row["numel"] == 80 * 32 for row in relu.values())
    scalars = server.scalars()
    assert sorted(scalars["loss"]) == list(range(40))
    assert scalars["loss"][39] < scalars["loss"][0]
    assert sorted(scalars["val_acc"]) == [20, 40]
    assert scalars["val_acc"][40] > 0.8
    assert run.counters.dropped == 0
    # per capture: 3 activations (stats, histogram, unit means), 4 weights (stats,
    # histogram, change), 4 gradients (stats, histogram); plus scalars and the tree
    assert run.counters.sent == 8 * (3 * 3 + 4 * 3 + 4 * 2) + 40 + 2 + 2 + 1
    assert not any(m._forward_hooks for m in model.modules())
    assert not optimizer._optimizer_step_post_hooks
