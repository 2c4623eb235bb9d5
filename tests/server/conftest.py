"""Runs for the plot gallery tests: a real training run, and the awkward ones.

``gallery_runs`` trains two small models on scikit-learn's digits with the real
client against the session's live server (once per backend), with a probe every
epoch (and integrated gradients), then adds runs no view may fail on: an empty
run, a run of a single step, and a run whose values are NaN and infinite.
"""

from __future__ import annotations

import math

import httpx
import pytest
import torch
from batches import body, histogram, make_batch, new_id, scalars_block, stats_block
from gallery import GalleryRuns
from sklearn.datasets import load_digits
from torch import nn

import layerwatch


def _train(server: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, name: str) -> str:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with layerwatch.Run(server, project="gallery", name=name) as run:
        probe = layerwatch.Probe(x[-200:], y[-200:], attributions=4)
        run.watch(model, optimizer, every=5, probe=probe)
        for _epoch in range(4):
            for i in range(25):
                xb, yb = x[i * 48 : (i + 1) * 48], y[i * 48 : (i + 1) * 48]
                loss = nn.functional.cross_entropy(model(xb), yb)
                optimizer.zero_grad()
                loss.backward()
                run.log({"loss": loss.detach()})
                optimizer.step()
            run.probe()
        assert run.counters.dropped == 0
        return run.id


def _post(api: httpx.Client, batch: object) -> str:
    run_id = new_id("r")
    api.post("/runs", json={"id": run_id, "project": "gallery"}).raise_for_status()
    if batch is not None:
        api.post(f"/runs/{run_id}/batches", content=body(batch)).raise_for_status()  # type: ignore[arg-type]
    return run_id


@pytest.fixture(scope="session")
def gallery_runs(live_server: str, api: httpx.Client) -> GalleryRuns:
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    torch.manual_seed(0)
    mlp = nn.Sequential(
        nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10)
    )
    cnn = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(8 * 4 * 4, 10),
    )  # fmt: skip
    odd_values = [math.nan, math.inf, -math.inf, 1.0]
    return GalleryRuns(
        mlp=_train(live_server, mlp, x, y, "digits-mlp"),
        cnn=_train(live_server, cnn, x.view(-1, 1, 8, 8), y, "digits-cnn"),
        empty=_post(api, None),
        single=_post(api, make_batch(
            stats=[stats_block("fc1", [0]), stats_block("fc1.weight", [0], kind="weight"),
                   stats_block("fc1.weight", [0], kind="grad")],
            histograms=[histogram("fc1", 0, [1, 2, 3]),
                        histogram("fc1.weight", 0, [4, 5], kind="weight")],
            scalars=[scalars_block("loss", [0], [1.0])],
        )),
        odd=_post(api, make_batch(
            stats=[stats_block("fc1", range(4), mean=odd_values, std=odd_values,
                               min=odd_values, max=odd_values, l2=odd_values,
                               abs_mean=odd_values),
                   stats_block("fc1.weight", range(4), kind="grad", mean=odd_values,
                               max=odd_values, abs_mean=odd_values)],
            scalars=[scalars_block("loss", range(4), odd_values)],
        )),
    )  # fmt: skip
