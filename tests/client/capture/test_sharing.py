"""The reducer reads captured CPU tensors in place only when training never changes them
afterwards (`capture.sharing`): whatever the loop does, the statistics are those of
the tensors at capture time."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
import torch
from torch import nn

import layerwatch
from layerwatch.capture.sharing import ShareGate

if TYPE_CHECKING:
    from tests.client.conftest import FakeServer

MakeRun = Callable[..., layerwatch.Run]


def test_the_gate_shares_what_was_left_alone_and_copies_what_changed() -> None:
    gate = ShareGate()
    kept, zeroed = torch.ones(4), torch.ones(4)
    for name, tensor in (("kept", kept), ("zeroed", zeroed)):
        seen, version = gate.hand_over(name, tensor, torch.clone)
        assert version is None  # first capture: a copy
        assert seen.data_ptr() != tensor.data_ptr()
    zeroed.zero_()
    gate.judge()
    assert gate.shares("kept")
    assert not gate.shares("zeroed")
    shared, version = gate.hand_over("kept", kept, torch.clone)
    assert shared.data_ptr() == kept.data_ptr()
    assert version == kept._version
    assert gate.intact("kept", shared, version)
    kept.add_(1)  # changed while the reducer read it
    assert not gate.intact("kept", shared, version)
    assert not gate.shares("kept")


def test_a_gradient_still_held_by_its_parameter_is_not_shared() -> None:
    """Zeroing in place through `.data` escapes the version counter: a parameter that
    keeps the same gradient object is never shared."""
    param = nn.Parameter(torch.ones(3))
    param.grad = torch.ones(3)
    gate = ShareGate()
    gate.hand_over("w", param.grad, torch.clone)
    param.grad.data.zero_()
    gate.judge(lambda name: param.grad)
    assert not gate.shares("w")


def _expected(tensor: torch.Tensor) -> dict[str, float]:
    x = tensor.detach().double()
    return {"mean": x.mean().item(), "min": x.min().item(), "max": x.max().item()}


@pytest.mark.usefixtures("slow_reducer")
@pytest.mark.parametrize("set_to_none", [True, False])
def test_statistics_are_those_at_capture_whatever_the_loop_does(
    server: FakeServer, make_run: MakeRun, set_to_none: bool
) -> None:
    torch.manual_seed(0)
    # ReLU(inplace=True) overwrites the first layer's output right after its hook.
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(inplace=True), nn.Linear(32, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run = make_run()
    watch = run.watch(model, optimizer, every=1)
    outputs: dict[int, torch.Tensor] = {}
    model[0].register_forward_hook(lambda m, a, out: outputs.__setitem__(0, out.clone()))
    expected: dict[tuple[str, str], dict[int, dict[str, float]]] = {}
    for step in range(12):
        optimizer.zero_grad(set_to_none=set_to_none)
        model(torch.randn(16, 8)).square().mean().backward()
        expected.setdefault(("0", "activation"), {})[step] = _expected(outputs[0])
        grad = model[0].weight.grad
        assert grad is not None
        expected.setdefault(("0.weight", "grad"), {})[step] = _expected(grad)
        optimizer.step()
    assert run.flush(10)
    stats = server.stats()
    for key, steps in expected.items():
        for step, values in steps.items():
            got = stats[key][step]
            for stat, value in values.items():
                assert got[stat] == pytest.approx(value, rel=1e-5, abs=1e-6), (key, step, stat)
    assert run.counters.dropped == 0
    # Shared: the gradients a loop drops, and outputs nothing changes in place.
    assert watch._params._sharing.shares("0.weight") is set_to_none
    assert watch._sharing.shares("2")
    assert not watch._sharing.shares("0")  # the in-place ReLU overwrites it
