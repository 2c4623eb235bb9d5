"""The server process is killed mid-training and comes back: nothing is lost or duplicated.

A real `layerwatch server` process on SQLite, a real training loop on scikit-learn's
digits. The server is SIGKILLed while batches flow, training goes on (the client
spools to disk), the server restarts on the same data folder and port, the run
finishes, and the database, opened directly, holds every record exactly once.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

import layerwatch

TENSOR_TABLES = ("stats", "histograms", "unit_means", "weight_changes")
STEPS = 60
KILL_AT, RESTART_AT = 20, 40


class ServerProcess:
    """`layerwatch server` as a child process, started and killed at will."""

    def __init__(self, port: int, data_dir: Path) -> None:
        self.port = port
        self.data_dir = data_dir
        self.url = f"http://127.0.0.1:{port}"
        self.log = data_dir.parent / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "LAYERWATCH_DATABASE_URL"}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "layerwatch_server.cli", "server", "--port",
                 str(self.port), "--data-dir", str(self.data_dir), "--log-level", "warning"],
                stdout=log, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip

    def wait_ready(self, timeout: float = 30.0) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while not _ready(self.url):
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, f"not ready in {timeout}s\n{self.log.read_text()}"
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    process = ServerProcess(port, tmp_path / "data")
    process.data_dir.mkdir()
    process.start()
    process.wait_ready()
    yield process
    process.stop()


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_digits(return_X_y=True)
    return torch.tensor(x, dtype=torch.float32) / 16, torch.tensor(y)  # (1797, 64), (1797,)


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, run: layerwatch.Run,
                step: int, inputs: torch.Tensor, targets: torch.Tensor) -> None:  # fmt: skip
    batch = slice((30 * step) % 1770, (30 * step) % 1770 + 30)
    loss = nn.functional.cross_entropy(model(inputs[batch]), targets[batch])
    optimizer.zero_grad()
    loss.backward()
    run.log({"loss": loss.detach()})
    optimizer.step()


@pytest.mark.slow
def test_server_killed_mid_run_loses_and_duplicates_nothing(
    server: ServerProcess, tmp_path: Path
) -> None:
    inputs, targets = _digits()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run = layerwatch.Run(
        server.url, project="fault", name="digits-mlp", flush_secs=0.02, batch_size=16,
        backoff=0.05, timeout=5.0, spool_dir=tmp_path / "spool",
    )  # fmt: skip
    watch = run.watch(model, optimizer, every=1)
    sent_before_kill = spooled_while_down = 0
    for step in range(STEPS):
        if step == KILL_AT:
            sent_before_kill = run.counters.sent
            server.kill()
        if step == RESTART_AT:
            spooled_while_down = run.counters.spooled
            server.start()  # training goes on while it starts
        _train_step(model, optimizer, run, step, inputs, targets)
        time.sleep(0.01)  # let batches go out between steps, as in real training
    server.wait_ready()
    assert run.finish(timeout=15.0)
    assert sent_before_kill > 0  # the kill came mid-run, not before anything was sent
    assert spooled_while_down > 0  # and the outage was bridged on disk
    _assert_stored_exactly_once(server, run, watch, model, STEPS, tmp_path / "spool")


@pytest.mark.slow
def test_server_hung_mid_run_loses_and_duplicates_nothing(
    server: ServerProcess, tmp_path: Path
) -> None:
    """SIGSTOP: the kernel still accepts connections, nothing answers. Requests hang
    until their read timeout, and the queue must keep draining into the spool: here
    the queue holds 300 records while the stall sees about 1,200."""
    inputs, targets = _digits()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run = layerwatch.Run(
        server.url, project="fault", name="digits-hung", flush_secs=0.02, batch_size=16,
        backoff=0.05, timeout=1.0, max_queue=300, spool_dir=tmp_path / "spool",
    )  # fmt: skip
    watch = run.watch(model, optimizer, every=1)
    steps, hang_at = 160, 20
    assert server.process is not None
    for step in range(hang_at):
        _train_step(model, optimizer, run, step, inputs, targets)
        time.sleep(0.01)
    assert run.flush(10)
    sent_before = run.counters.sent
    server.process.send_signal(signal.SIGSTOP)
    try:
        stalled = time.monotonic()
        for step in range(hang_at, hang_at + 100):  # about 3 s: three read timeouts
            _train_step(model, optimizer, run, step, inputs, targets)
            time.sleep(0.02)
        stalled = time.monotonic() - stalled
        assert run.counters.sent == sent_before  # nothing got through: it really hung
        assert run.counters.dropped == 0  # and nothing was lost waiting for it
        assert run.counters.spooled > 300  # more than the queue holds went to disk
    finally:
        server.process.send_signal(signal.SIGCONT)
    resumed = time.monotonic()
    for step in range(hang_at + 100, steps):
        _train_step(model, optimizer, run, step, inputs, targets)
        time.sleep(0.01)
    assert run.flush(30)
    drained = time.monotonic() - resumed
    assert stalled > 2.0
    assert drained < 10.0  # the backlog goes out within seconds of the server's return
    assert run.finish(timeout=15.0)
    _assert_stored_exactly_once(server, run, watch, model, steps, tmp_path / "spool")


def _assert_stored_exactly_once(
    server: ServerProcess, run: layerwatch.Run, watch: layerwatch.Watch, model: nn.Module,
    steps: int, spool: Path,
) -> None:  # fmt: skip
    """Every record of `steps` steps is in the database once, and nothing is left."""
    counters = run.counters
    assert (counters.dropped, counters.failed_batches, counters.spooled) == (0, 0, 0)
    assert not (spool / run.id).exists()
    server.stop()

    with sqlite3.connect(server.data_dir / "layerwatch.db") as db:
        rows = {
            table: db.execute(
                f"SELECT t.name, t.kind, r.step FROM {table} r "
                "JOIN tensors t ON t.id = r.tensor_id WHERE t.run_id = ?", (run.id,),
            ).fetchall()
            for table in TENSOR_TABLES
        }  # fmt: skip
        scalars = db.execute(
            "SELECT name, step FROM scalars WHERE run_id = ?", (run.id,)
        ).fetchall()
        [(models,)] = db.execute("SELECT count(*) FROM modules WHERE run_id = ?", (run.id,))
        batches = db.execute("SELECT batch_id FROM batches WHERE run_id = ?", (run.id,)).fetchall()
        [(status,)] = db.execute("SELECT status FROM runs WHERE id = ?", (run.id,)).fetchall()
    tensors = [(n, "activation") for n in watch.names] + [
        (p, kind) for p in watch.parameters for kind in ("weight", "grad")
    ]
    expected = {
        "stats": tensors,
        "histograms": tensors,
        "unit_means": [(n, "activation") for n in watch.names],
        "weight_changes": [(p, "weight") for p in watch.parameters],
    }
    for table, keys in expected.items():
        want = {(name, kind, step) for name, kind in keys for step in range(steps)}
        assert len(rows[table]) == len(set(rows[table])), table  # 0 duplicated
        assert set(rows[table]) == want, table  # 0 lost
    assert sorted(scalars) == [("loss", step) for step in range(steps)]
    assert models == len(list(model.modules()))  # the tree, once
    stored = sum(len(r) for r in rows.values()) + len(scalars) + 1  # one model tree
    assert stored == counters.sent  # every record sent is stored, once
    batch_ids = [batch_id for (batch_id,) in batches]
    assert len(batch_ids) == len(set(batch_ids))
    assert status == "finished"
