"""DistributedDataParallel on the gloo backend: two processes write one run, each
record carrying its rank, and gradients are read after DDP averaged them."""

from __future__ import annotations

import os
import socket

import httpx
import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from sklearn.datasets import load_iris  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

import layerwatch  # noqa: E402
from auth_headers import auth_headers  # noqa: E402

STEPS = 6
WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, port: int, server: str, run_id: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)  # same initial weights on both ranks
        x, y = load_iris(return_X_y=True)
        x = torch.tensor((x - x.mean(0)) / x.std(0), dtype=torch.float32)
        y = torch.tensor(y)
        shard = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))[rank::WORLD]
        # DDP's wrapper is stripped: tensors keep the inner model's names ("0", not "module.0")
        model = DistributedDataParallel(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        with layerwatch.Run(server, project="ddp", id=run_id, flush_secs=0.2) as run:
            run.watch(model, optimizer, every=1, probe=layerwatch.Probe(x[:30], y[:30], every=3))
            for step in range(STEPS):
                batch = shard[step * 10 : (step + 1) * 10]
                with model.no_sync():  # gradient accumulation: two micro-batches
                    nn.functional.cross_entropy(model(x[batch[:5]]), y[batch[:5]]).backward()
                nn.functional.cross_entropy(model(x[batch[5:]]), y[batch[5:]]).backward()
                run.log({"loss": 1.0 / (step + 1)})
                optimizer.step()
                optimizer.zero_grad()
    finally:
        dist.destroy_process_group()


def test_two_ranks_write_one_run(live_server: str) -> None:
    run_id = "ddp-" + os.urandom(4).hex()
    mp.start_processes(
        _worker, args=(_free_port(), live_server, run_id), nprocs=WORLD, start_method="spawn"
    )
    base = f"{live_server}/api/v1/runs/{run_id}"
    with httpx.Client(headers=auth_headers(), timeout=30) as http:

        def series(tensor: str, kind: str, rank: int) -> dict[int, float]:
            params = {"tensor": tensor, "kind": kind, "stat": "mean", "rank": rank}
            points = http.get(f"{base}/series", params=params).raise_for_status().json()
            return dict(zip(points["steps"], points["values"], strict=True))

        for rank in range(WORLD):
            # one record per optimizer step despite two micro-batches
            assert sorted(series("0", "activation", rank)) == list(range(STEPS))
        # each rank saw its own shard...
        assert series("0", "activation", 0) != series("0", "activation", 1)
        # ...but the optimizer applied DDP's average: equal gradients on both ranks
        grads = [series("0.weight", "grad", rank) for rank in range(WORLD)]
        assert sorted(grads[0]) == list(range(STEPS))
        assert grads[0] == pytest.approx(grads[1], rel=1e-5, abs=1e-7)
        weights = [series("2.weight", "weight", rank) for rank in range(WORLD)]
        assert weights[0] == pytest.approx(weights[1], rel=1e-6)
