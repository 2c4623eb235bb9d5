"""Several server processes on one PostgreSQL database: 8 training processes at once.

``layerwatch server --workers 2`` (uvicorn's workers) serves 8 client
processes using the real `layerwatch.Run` with ``LAYERWATCH_TOKEN``; every
record arrives once, none is lost, and no request gets a 5xx.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from layerwatch_server.db import make_engine, make_sessionmakers, managed_session
from layerwatch_server.migrate import upgrade_database
from layerwatch_server.store.tokens import create_token

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

CLIENTS = 8
STEPS = 200
CLIENT = """
import json, sys
import torch
from torch import nn
import layerwatch

torch.manual_seed(int(sys.argv[2]))
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
# A queue that holds the whole run: on a loaded machine the training loop may
# outpace the sender, and this test is about the server losing nothing.
with layerwatch.Run(sys.argv[1], project="workers", name="c" + sys.argv[2],
                    batch_size=50, flush_secs=0.05, spool_dir=None, max_queue=100_000) as run:
    run.watch(model, optimizer, every=1)
    for step in range(int(sys.argv[3])):
        loss = model(torch.randn(4, 8)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        run.log({"loss": float(step)})
        optimizer.step()
    assert run.flush(60)
counters = run.counters
print(json.dumps({"id": run.id, "sent": counters.sent, "dropped": counters.dropped,
                  "failed": counters.failed_batches}))
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def postgres_url(postgres_server) -> Iterator[str]:  # type: ignore[no-untyped-def]
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)


def test_eight_clients_through_two_workers(postgres_url: str, tmp_path, request) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(postgres_url)
    upgrade_database(engine)
    _, write = make_sessionmakers(engine)
    with managed_session(write) as session:
        token = create_token(session, name="trainers", scope="write").secret
    engine.dispose()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "server.log").open("w+")
    request.addfinalizer(log.close)
    server = subprocess.Popen(
        [sys.executable, "-m", "layerwatch_server.cli", "server", "--workers", "2",
         "--port", str(port), "--database-url", postgres_url],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)

        env = {**os.environ, "LAYERWATCH_TOKEN": token}
        clients = [
            subprocess.Popen(
                [sys.executable, "-c", CLIENT, url, str(i), str(STEPS)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for i in range(CLIENTS)
        ]
        results = []
        for client in clients:
            out, err = client.communicate(timeout=300)
            assert client.returncode == 0, err
            results.append({**json.loads(out.strip().splitlines()[-1]), "stderr": err})

        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=f"{url}/api/v1", headers=headers, timeout=30) as api:
            for result in results:
                assert result["dropped"] == 0, result["stderr"]
                assert result["failed"] == 0, result["stderr"]
                loss = api.get(
                    f"/runs/{result['id']}/scalars/series",
                    params={"name": "loss", "limit": 100_000},
                ).json()
                assert loss["steps"] == list(range(STEPS))  # none lost, none twice
                assert loss["values"] == [float(step) for step in range(STEPS)]
                fc = api.get(
                    f"/runs/{result['id']}/series",
                    params={"tensor": "0", "stat": "mean", "limit": 100_000},
                ).json()
                assert fc["steps"] == list(range(STEPS))
            assert api.get("/projects/workers/runs").json()["count"] == CLIENTS
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)
    log.seek(0)
    output = log.read()
    assert len(set(re.findall(r"Started server process \[(\d+)\]", output))) >= 2, output
    assert not re.findall(r'HTTP/1\.1" 5\d\d', output), output
    assert '" 200' in output  # the access log was there to be searched
