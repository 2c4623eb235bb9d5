"""Short real trainings on scikit-learn's digits, each with one pathology planted.

A module of its own (not conftest) so that the diagnosis, SDK and CLI tests can
import it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from sklearn.datasets import load_digits
from torch import nn

import layerwatch

STEPS = 40
EVERY = 2


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_digits(return_X_y=True)
    return torch.tensor(x, dtype=torch.float32) / 16.0, torch.tensor(y)


def train(
    server: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    name: str,
    steps: int = STEPS,
    every: int = EVERY,
    batch: int = 64,
    images: bool = False,
    before_step: Callable[[int], None] | None = None,
    mse: bool = False,
) -> str:
    """Train ``model`` on digits for ``steps`` steps, logging ``loss``; return the run id.

    ``before_step(step)`` runs before each forward pass."""
    x, y = digits()
    if images:
        x = x.reshape(-1, 1, 8, 8)
    generator = torch.Generator().manual_seed(0)
    with layerwatch.Run(server, project="diagnosis", name=name) as run:
        run.watch(model, optimizer, every=every)
        for step in range(steps):
            index = torch.randint(0, len(x), (batch,), generator=generator)
            if before_step is not None:
                before_step(step)
            out = model(x[index])
            if mse:  # regression on one-hot targets: diverges geometrically when lr is too high
                loss = nn.functional.mse_loss(out, nn.functional.one_hot(y[index], 10).float())
            else:
                loss = nn.functional.cross_entropy(out, y[index])
            optimizer.zero_grad()
            loss.backward()
            run.log({"loss": loss.detach()})
            optimizer.step()
        return run.id


def mlp(*widths: int) -> nn.Sequential:
    """Linear layers of ``widths`` (64 in, 10 out) with ReLUs between them."""
    layers: list[nn.Module] = []
    sizes = [64, *widths, 10]
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Poison(nn.Module):
    """Passes its input through, but multiplies it by NaN at step ``at`` and after."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at
        self.step = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * float("nan") if self.step >= self.at else x
