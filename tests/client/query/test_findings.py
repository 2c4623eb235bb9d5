"""`RunRef.findings()`: the server's diagnosis of a run as typed, frozen results."""

from __future__ import annotations

import dataclasses
import uuid

import pytest
import torch
from sklearn.datasets import load_iris
from torch import nn

import layerwatch
from layerwatch.query.results import Finding


@pytest.fixture(scope="module")
def left_out_run(live_server: str) -> str:
    """Iris with the first layer left out of the optimizer: it gets gradients, never moves."""
    x, y = load_iris(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model[2].parameters(), lr=0.1)
    with layerwatch.Run(live_server, project="findings-sdk", name="left-out") as run:
        run.watch(model, optimizer, every=2)
        for _ in range(12):
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return run.id


def test_findings_are_typed_and_frozen(live_server: str, left_out_run: str) -> None:
    with layerwatch.Api(live_server, timeout=30.0) as api:
        findings = api.run(left_out_run).findings()
    by_tensor = {f.tensor: f for f in findings if f.kind == "not_updating"}
    assert set(by_tensor) == {"0.weight", "0.bias"}
    finding = by_tensor["0.weight"]
    assert isinstance(finding, Finding)
    assert finding.severity == "warning"
    assert finding.tensor_kind == "weight"
    assert finding.scalar is None
    assert finding.step <= 2
    assert isinstance(finding.last_step, int)
    assert 0 <= finding.confidence <= 1
    assert "optimizer" in finding.message
    assert finding.evidence["captures"] >= 2
    assert finding.view.startswith(f"/api/v1/runs/{left_out_run}/plots/weight-change.png?")
    with pytest.raises(dataclasses.FrozenInstanceError):
        finding.step = 0  # type: ignore[misc]


def test_findings_of_a_run_the_server_lacks_raise(live_server: str, left_out_run: str) -> None:
    with layerwatch.Api(live_server, timeout=30.0) as api:
        gone = dataclasses.replace(api.run(left_out_run), id=uuid.uuid4().hex)
        with pytest.raises(layerwatch.RunNotFoundError):
            gone.findings()
