"""Server faults during training: what is lost, what is duplicated, how fast it drains.

A real `layerwatch server` process on a throw-away SQLite database, a real training
loop (an MLP on scikit-learn's digits, every step captured). Mid-run the server is
either killed (SIGKILL: connections are refused) and started again, or hung
(SIGSTOP: the kernel still accepts connections, nothing answers) and resumed
(SIGCONT), for `--outage` seconds. Training goes on throughout. The figures:
records the run produced, rows lost and duplicated (read from the database), the
most records waiting on disk, and the seconds from the server's return until
everything was delivered.

    python bench/faults.py                  # kill and hang, 15 s outages: about a minute
    python bench/faults.py --outage 60 --faults hang

It reports and exits 0; the tests in tests/test_fault.py assert the promises.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from torch import nn

import layerwatch

TABLES = ("stats", "histograms", "unit_means", "weight_changes", "scalars")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", nargs="+", choices=("kill", "hang"), default=["kill", "hang"])
    parser.add_argument("--outage", type=float, default=15.0, help="seconds the server is away")
    parser.add_argument("--step-secs", type=float, default=0.02, help="sleep per training step")
    args = parser.parse_args()
    print("| fault | outage s | records | stored | lost | duplicated | most on disk | drain s |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    for fault in args.faults:
        with tempfile.TemporaryDirectory() as folder:
            row = _measure(fault, args.outage, args.step_secs, Path(folder))
        print("| " + " | ".join(str(v) for v in row) + " |", flush=True)


def _measure(fault: str, outage: float, step_secs: float, folder: Path) -> list[object]:
    server = _Server(folder / "data")
    x, y = load_digits(return_X_y=True)
    inputs, targets = torch.tensor(x, dtype=torch.float32) / 16, torch.tensor(y)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run = layerwatch.Run(server.url, project="faults", name=fault, spool_dir=folder / "spool",
                         flush_secs=0.1, timeout=2.0)  # fmt: skip
    run.watch(model, optimizer, every=1)
    step, most_on_disk = 0, 0

    def train(seconds: float) -> None:
        nonlocal step, most_on_disk
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            rows = slice((30 * step) % 1770, (30 * step) % 1770 + 30)
            loss = nn.functional.cross_entropy(model(inputs[rows]), targets[rows])
            optimizer.zero_grad()
            loss.backward()
            run.log({"loss": loss.detach()})
            optimizer.step()
            step += 1
            most_on_disk = max(most_on_disk, run.counters.spooled)
            time.sleep(step_secs)

    try:
        train(3.0)
        if fault == "kill":
            server.kill()
            train(outage)
            server.start()
        else:
            server.signal(signal.SIGSTOP)
            train(outage)
            server.signal(signal.SIGCONT)
        back = time.monotonic()
        run.flush(120)
        drain = time.monotonic() - back
        run.finish(timeout=30)
        counters = run.counters
    finally:
        server.stop()
    with sqlite3.connect(folder / "data" / "layerwatch.db") as db:
        stored = distinct = 0
        for table in TABLES:
            key = "name, step" if table == "scalars" else "tensor_id, step"
            stored += db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            distinct += db.execute(f"SELECT count(*) FROM (SELECT DISTINCT {key} FROM {table})"
                                   ).fetchone()[0]  # fmt: skip
        stored += db.execute("SELECT count(DISTINCT run_id) FROM modules").fetchone()[0]
        distinct += db.execute("SELECT count(DISTINCT run_id) FROM modules").fetchone()[0]
    produced = counters.sent + counters.dropped + counters.spooled
    return [fault, f"{outage:g}", produced, stored, produced - distinct, stored - distinct,
            most_on_disk, f"{drain:.1f}"]  # fmt: skip


class _Server:
    """`layerwatch server` as a child process on a free port."""

    def __init__(self, data_dir: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        data_dir.mkdir(parents=True)
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "LAYERWATCH_DATABASE_URL"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "layerwatch_server.cli", "server", "--port", str(self.port),
             "--data-dir", str(self.data_dir), "--log-level", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        raise RuntimeError("the server did not start")

    def signal(self, number: int) -> None:
        assert self.process is not None
        self.process.send_signal(number)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        assert self.process is not None
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            self.process.wait(15)


if __name__ == "__main__":
    main()
