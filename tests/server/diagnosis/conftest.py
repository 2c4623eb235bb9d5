"""Real short trainings on digits, one per pathology, shared by the diagnosis tests.

Each fixture trains once per backend (``live_server`` is per backend) and gives
the run's findings as the endpoint answers them, with the run id.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import torch
from torch import nn

from diagnosis.training import Poison, mlp, train


@dataclass(frozen=True)
class Diagnosed:
    run_id: str
    findings: list[dict[str, Any]]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.findings if f["kind"] == kind]

    @property
    def serious(self) -> list[dict[str, Any]]:
        return [f for f in self.findings if f["severity"] != "info"]


def _diagnose(api: httpx.Client, run_id: str) -> Diagnosed:
    response = api.get(f"/runs/{run_id}/findings", timeout=60)
    response.raise_for_status()
    return Diagnosed(run_id, response.json()["findings"])


Trainer = Callable[..., Diagnosed]


@pytest.fixture(scope="session")
def trained(live_server: str, api: httpx.Client) -> Trainer:
    """``trained(model, optimizer, name=..., **train_kwargs)``: train, then diagnose."""

    def run(model: nn.Module, optimizer: torch.optim.Optimizer, **kwargs: Any) -> Diagnosed:
        return _diagnose(api, train(live_server, model, optimizer, **kwargs))

    return run


@pytest.fixture(scope="session")
def healthy_sgd(trained: Trainer) -> Diagnosed:
    torch.manual_seed(0)
    model = mlp(32, 16)
    return trained(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), name="sgd")


@pytest.fixture(scope="session")
def healthy_adam(trained: Trainer) -> Diagnosed:
    torch.manual_seed(0)
    model = mlp(32, 16)
    return trained(model, torch.optim.Adam(model.parameters(), lr=1e-2), name="adam")


@pytest.fixture(scope="session")
def healthy_cnn(trained: Trainer) -> Diagnosed:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(72, 10)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    return trained(model, optimizer, name="cnn", images=True)


@pytest.fixture(scope="session")
def exploding(trained: Trainer) -> Diagnosed:
    """A linear regression on one-hot digits with a learning rate of 2: it diverges."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.Linear(32, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=2.0)
    return trained(model, optimizer, name="exploding", every=1, mse=True)


@pytest.fixture(scope="session")
def oscillating(trained: Trainer) -> Diagnosed:
    """Softmax regression with SGD at a learning rate of 300: it bounces, never settles."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 10))
    return trained(model, torch.optim.SGD(model.parameters(), lr=300.0), name="oscillating")


@pytest.fixture(scope="session")
def too_slow(trained: Trainer) -> Diagnosed:
    """A learning rate of 1e-5: the loss does not move, the updates are tiny."""
    torch.manual_seed(0)
    model = mlp(32, 16)
    return trained(model, torch.optim.SGD(model.parameters(), lr=1e-5), name="slow")


@pytest.fixture(scope="session")
def vanishing(trained: Trainer) -> Diagnosed:
    """Eight sigmoid layers initialised with weights of std 0.01."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(64, 16), nn.Sigmoid()]
    for _ in range(6):
        layers += [nn.Linear(16, 16), nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(16, 10))
    for module in model:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.01)
            nn.init.zeros_(module.bias)
    return trained(model, torch.optim.SGD(model.parameters(), lr=0.1), name="vanishing")


@pytest.fixture(scope="session")
def left_out(trained: Trainer) -> Diagnosed:
    """The first layer is not given to the optimizer."""
    torch.manual_seed(0)
    model = mlp(32)
    return trained(model, torch.optim.SGD(model[2].parameters(), lr=0.1), name="left-out")


@pytest.fixture(scope="session")
def frozen(trained: Trainer) -> Diagnosed:
    """The first layer is frozen (``requires_grad_(False)``), the rest trains."""
    torch.manual_seed(0)
    model = mlp(32)
    model[0].requires_grad_(False)
    optimizer = torch.optim.Adam(model[2].parameters(), lr=1e-2)
    return trained(model, optimizer, name="frozen")


@pytest.fixture(scope="session")
def dead(trained: Trainer) -> Diagnosed:
    """A bias of -20 before the second ReLU (`3`): it outputs 0 for every digit."""
    torch.manual_seed(0)
    model = mlp(32, 16)
    nn.init.constant_(model[2].bias, -20.0)
    return trained(model, torch.optim.SGD(model.parameters(), lr=0.1), name="dead")


@pytest.fixture(scope="session")
def saturated(trained: Trainer) -> Diagnosed:
    """A tanh layer (`1`) behind weights of std 10."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
    nn.init.normal_(model[0].weight, std=10.0)
    return trained(model, torch.optim.SGD(model.parameters(), lr=0.1), name="saturated")


NAN_STEP = 11


@pytest.fixture(scope="session")
def poisoned(trained: Trainer) -> Diagnosed:
    """A module (`2`) that turns its input into NaN from step `NAN_STEP` on."""
    torch.manual_seed(0)
    poison = Poison(at=NAN_STEP)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), poison, nn.Linear(32, 10))

    def tick(step: int) -> None:
        poison.step = step

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return trained(model, optimizer, name="poisoned", every=1, before_step=tick)
