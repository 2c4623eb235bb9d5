"""A training process killed while the server is away; `layerwatch sync` delivers its spool."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, text

from auth_headers import auth_headers

# The child trains with the real client against a port nobody listens on, lets
# the sender seal what is queued onto disk (a flush that cannot succeed), then is
# killed before it can finish the run.
CHILD = """
import os, signal, sys
import torch
from torch import nn
import layerwatch

server, spool_dir, run_id, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
run = layerwatch.Run(server, project="sync-e2e", id=run_id, spool_dir=spool_dir,
                     flush_secs=0.02, batch_size=7, backoff=0.05)
watch = run.watch(model, optimizer, every=1, weights=False, gradients=False, histograms=None,
                  unit_means=False, probe=(torch.randn(20, 4), torch.arange(20) % 2))
for step in range(steps):  # activation statistics, the model tree, and two probes
    loss = model(torch.randn(3, 4)).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    run.log({"loss": loss.detach()})
    optimizer.step()
    if step % 6 == 5:
        run.probe()
assert not run.flush(1.0)
print(",".join(watch.names), run.counters.spooled, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _sync(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "layerwatch_server.cli", "sync", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def _stored(engine: Engine, run_id: str) -> dict[str, list[tuple[object, ...]]]:
    with engine.connect() as connection:
        rows = {
            "stats": connection.execute(
                text("SELECT t.name, t.kind, s.step FROM stats s "
                     "JOIN tensors t ON t.id = s.tensor_id WHERE t.run_id = :run"),
                {"run": run_id},
            ).all(),
            "scalars": connection.execute(
                text("SELECT name, step FROM scalars WHERE run_id = :run"), {"run": run_id}
            ).all(),
            "batches": connection.execute(
                text("SELECT batch_id FROM batches WHERE run_id = :run"), {"run": run_id}
            ).all(),
            "probes": connection.execute(
                text("SELECT step, name FROM probe_layers WHERE run_id = :run"), {"run": run_id}
            ).all(),
        }  # fmt: skip
    return {name: sorted(tuple(row) for row in found) for name, found in rows.items()}


@pytest.mark.slow
def test_sync_delivers_the_spool_of_a_killed_process(
    live_server: str, engine: Engine, tmp_path: Path
) -> None:
    run_id = f"sync-{uuid.uuid4().hex[:12]}"
    spool_dir = tmp_path / "spool"
    steps = 12
    child = subprocess.run(
        [sys.executable, "-c", CHILD, f"http://127.0.0.1:{_closed_port()}", str(spool_dir),
         run_id, str(steps)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert child.returncode == -signal.SIGKILL, child.stderr
    names_field, spooled = child.stdout.split()
    names = names_field.split(",")
    directory = spool_dir / run_id
    assert (directory / "run.json").exists()
    assert list(directory.glob("*.seg"))
    assert len(list((directory / "probes").glob("*.probe"))) == 2  # the probes, beside them

    # The server named in the spool is still away: nothing is lost, the exit code says so.
    failed = _sync("--spool-dir", str(spool_dir), "--timeout", "0.3")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert f"{spooled} still spooled" in failed.stdout
    assert _stored(engine, run_id)["batches"] == []

    synced = _sync("--spool-dir", str(spool_dir), "--server", live_server)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert synced.stdout.strip() == f"run {run_id}: {spooled} records sent"
    assert not directory.exists()

    stored = _stored(engine, run_id)
    activations = [row for row in stored["stats"] if row[1] == "activation"]
    assert activations == sorted((n, "activation", s) for n in names for s in range(steps))
    assert stored["scalars"] == [("loss", s) for s in range(steps)]
    assert stored["probes"] == sorted((s, n) for s in (6, 12) for n in names)
    # each record once: statistics, scalars, the model tree and the probes' layers
    assert len(stored["stats"]) + len(stored["scalars"]) + 1 + len(stored["probes"]) == int(spooled)
    batch_ids = [row[0] for row in stored["batches"]]
    assert len(batch_ids) == len(set(batch_ids))
    with httpx.Client(headers=auth_headers(), base_url=f"{live_server}/api/v1", timeout=10) as api:
        run = api.get(f"/runs/{run_id}").raise_for_status().json()
        assert run["project"] == "sync-e2e"
        assert run["status"] == "running"  # killed: nobody knows how it ended

    again = _sync("--spool-dir", str(spool_dir), "--server", live_server)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.strip() == f"nothing to sync in {spool_dir}"
    assert _stored(engine, run_id) == stored
