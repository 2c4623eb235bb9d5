"""Runs that several view test modules share: a tiny model with a 2-feature layer, an
awkward hand-made probe, and a crafted run of statistics."""

from __future__ import annotations

import base64
import math

import httpx
import numpy as np
import pytest
import torch
from batches import (
    body,
    histogram,
    make_batch,
    new_id,
    packed_floats,
    stats_block,
    weight_changes_block,
)
from sklearn.datasets import load_digits
from torch import nn

import layerwatch


@pytest.fixture(scope="session")
def tiny_run(live_server: str) -> str:
    """A digits model with a 2-feature bottleneck, probed without labels on 50 samples."""
    data = load_digits()
    x = torch.tensor(data.data[:300], dtype=torch.float32) / 16.0
    y = torch.tensor(data.target[:300])
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(64, 2), nn.Linear(2, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with layerwatch.Run(live_server, project="gallery", name="tiny-2d") as run:
        run.watch(model, optimizer, every=5, probe=x[-50:])
        for i in range(10):
            loss = nn.functional.cross_entropy(
                model(x[i * 25 : (i + 1) * 25]), y[i * 25 : (i + 1) * 25]
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if i % 5 == 4:
                run.probe()
        return run.id


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(array.tobytes()).decode()


@pytest.fixture(scope="session")
def awkward_run(api: httpx.Client) -> str:
    """One probe of 6 samples: NaN and infinite features, a constant layer, a 1-feature layer."""
    run_id = new_id("r")
    api.post("/runs", json={"id": run_id, "project": new_id("p")}).raise_for_status()
    odd = np.arange(18, dtype="<f2").reshape(6, 3)
    odd[0, 0], odd[1, 1], odd[2, 2] = np.nan, np.inf, -np.inf
    layers = {"odd": odd, "flat": np.zeros((6, 4), "<f2"), "one": np.ones((6, 1), "<f2"),
              "out": np.arange(12, dtype="<f2").reshape(6, 2)}  # fmt: skip
    probe = {"step": 7, "samples": 6, "labels": _b64(np.array([0, 0, 1, 1, 2, 2], "<i4")),
             "predictions": _b64(np.array([0, 1, 1, 1, 2, 0], "<i4")),
             "layers": [{"name": name, "features_shape": list(values.shape),
                         "features": _b64(values)} for name, values in layers.items()]}  # fmt: skip
    api.post(f"/runs/{run_id}/probes", json=probe).raise_for_status()
    return run_id


@pytest.fixture(scope="session")
def crafted(api: httpx.Client) -> str:
    run_id = new_id("r")
    api.post("/runs", json={"id": run_id, "project": new_id("p")}).raise_for_status()
    hists = [histogram("h", s, [1 + s, 2, 3, s], lo=-1.0 - s, hi=1.0 + s, sample_size=500)
             for s in range(10) if s not in (5, 7)]  # fmt: skip
    hists.append(histogram("h", 5, [0, 0, 0, 0], sample_size=500))  # empty: skipped
    hists.append(histogram("h", 7, [4, 0, 0, 0], lo=0.25, hi=0.25))  # constant tensor
    zero_grad = [0.0, 0.5, 0.0, 2.0]
    rows = [packed_floats([0.0, -1.0, 0.0, 2.0]), packed_floats([0.0, 0.5, 1e-3, 0.0])]
    changes = weight_changes_block("w.weight", range(4))
    changes["since_init"][2] = math.inf
    batch = make_batch(
        histograms=hists,
        stats=[stats_block("a.weight", range(4), kind="grad", abs_mean=zero_grad),
               stats_block("b.weight", range(4), kind="grad")],
        weight_changes=[changes],
        unit_means=[{"name": "u", "kind": "activation", "steps": [0, 1], "values": rows}],
    )  # fmt: skip
    api.post(f"/runs/{run_id}/batches", content=body(batch)).raise_for_status()
    return run_id
