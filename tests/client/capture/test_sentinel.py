"""The non-finite sentinel: NaN and inf seen on every step, reported with the next batch."""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import pytest
import torch
from torch import nn

import layerwatch
from layerwatch import wire
from layerwatch.capture import sentinel

if TYPE_CHECKING:
    from tests.client.conftest import FakeServer

MakeRun = Callable[..., layerwatch.Run]


@pytest.fixture(params=["host", "device"])
def both_paths(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run a test on the CPU host path and on the device path (on CPU tensors)."""
    if request.param == "device":
        monkeypatch.setattr(sentinel, "HOST_DEVICES", frozenset())


class Spike(nn.Module):
    """Identity, except that its output is NaN at the steps in `at` (counted by the test)."""

    def __init__(self, at: Iterable[int] = ()) -> None:
        super().__init__()
        self.at = set(at)
        self.step = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.step not in self.at:
            return x
        # NaN forward, identity backward: behind a NaN-tolerant loss, gradients stay finite
        return x + (torch.full_like(x, torch.nan) - x).detach()


def _train(
    model: nn.Sequential,
    optimizer: torch.optim.Optimizer,
    steps: int,
    *,
    spike: Spike | None = None,
    nan_grad_at: int | None = None,
    tolerant: bool = False,
) -> None:
    """`steps` optimizer steps; `tolerant` losses ignore non-finite outputs (their
    gradients stay finite), so the model recovers after a spike at its end."""
    torch.manual_seed(0)
    for step in range(steps):
        if spike is not None:
            spike.step = step
        out = model(torch.randn(8, 4))
        loss = (torch.nan_to_num(out, nan=0.0) if tolerant else out).square().mean()
        loss.backward()
        if step == nan_grad_at:
            first = model[0]
            assert isinstance(first, nn.Linear)
            assert first.weight.grad is not None
            first.weight.grad[0, 0] = torch.inf
        optimizer.step()
        optimizer.zero_grad()


@pytest.mark.usefixtures("both_paths")
def test_a_nan_between_captures_is_reported_with_its_step_and_layer(
    server: FakeServer, make_run: MakeRun
) -> None:
    spike = Spike(at=[37])
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), spike, nn.Linear(8, 8), nn.Tanh())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    run = make_run()
    run.watch(model, optimizer, every=50)
    _train(model, optimizer, 60, spike=spike)
    assert run.flush(5)
    [event] = server.nonfinite()
    # The NaN reached the loss: every gradient fired at step 37 too; the weights
    # are NaN from then on, the first layer's output from step 38 (not reported:
    # the first step of this report is 37).
    assert event == wire.NonfiniteEvent(
        step=37, tensor="2", kind="activation",
        also=["3", "4", "0.weight", "0.bias", "3.weight", "3.bias"],
    )  # fmt: skip
    assert server.stats()[("0", "activation")][50]["nonfinite"] == 8 * 8  # all NaN by 50


def test_a_gradient_alone_turning_infinite_is_reported_on_accelerators(
    server: FakeServer, make_run: MakeRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sentinel, "HOST_DEVICES", frozenset())  # the device path
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    run = make_run()
    run.watch(model, optimizer, every=10)
    _train(model, optimizer, 20, nan_grad_at=13)
    assert run.flush(5)
    events = server.nonfinite()
    assert events[0] == wire.NonfiniteEvent(step=13, tensor="0.weight", kind="grad")
    # The update made the first layer's weights infinite: its output turns at step 14,
    # reported in the same window (the earliest step only).
    assert len(events) == 1


@pytest.mark.parametrize("optimizer_given", [True, False])
def test_on_the_cpu_a_gradient_is_found_through_the_weights_it_poisoned(
    server: FakeServer, make_run: MakeRun, optimizer_given: bool
) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    run = make_run()
    run.watch(model, optimizer if optimizer_given else None, every=10)
    torch.manual_seed(0)
    for step in range(20):
        loss = model(torch.randn(8, 4)).square().mean()
        loss.backward()
        if step == 13:
            model[0].weight.grad[0, 0] = torch.inf  # type: ignore[index]
        optimizer.step()
        optimizer.zero_grad()
        if not optimizer_given:
            run.step()
    assert run.flush(5)
    # Step 13's update made the first layer's weights infinite; step 14's outputs
    # turned, and the weights are named as the origin, at the update of step 13.
    events = server.nonfinite()
    assert events[0] == wire.NonfiniteEvent(step=13, tensor="0.weight", kind="weight")
    assert len(events) == 1


@pytest.mark.usefixtures("both_paths")
def test_healthy_training_sends_no_event_and_leaves_the_field_out(
    server: FakeServer, make_run: MakeRun
) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    run = make_run()
    run.watch(model, optimizer, every=5)
    _train(model, optimizer, 12)
    assert run.flush(5)
    assert server.batches
    assert server.nonfinite() == []
    # Servers from before the sentinel refuse unknown fields: an empty list is not sent.
    for request in server.batch_posts():
        body = request.content
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        assert "nonfinite" not in json.loads(body)


def test_sentinel_false_sends_nothing(server: FakeServer, make_run: MakeRun) -> None:
    spike = Spike(at=[3])
    model = nn.Sequential(nn.Linear(4, 8), spike, nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    run = make_run()
    run.watch(model, optimizer, every=5, sentinel=False)
    _train(model, optimizer, 12, spike=spike)
    assert run.flush(5)
    assert server.stats()[("2", "activation")][5]["nonfinite"] == 8 * 2  # it did happen
    assert server.nonfinite() == []
    with pytest.raises(layerwatch.ConfigError, match="sentinel"):
        run.watch(nn.Linear(2, 2), sentinel="no")  # type: ignore[arg-type]


@pytest.mark.usefixtures("both_paths")
def test_an_incident_after_recovery_is_reported_again_and_a_lasting_one_once(
    server: FakeServer, make_run: MakeRun
) -> None:
    spike = Spike(at=[7, 8, 9, 23])  # the last module: the tolerant loss keeps weights finite
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2), spike)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    run = make_run()
    run.watch(model, optimizer, every=10)
    _train(model, optimizer, 40, spike=spike, tolerant=True)
    assert run.flush(5)
    assert server.nonfinite() == [
        wire.NonfiniteEvent(step=7, tensor="3", kind="activation"),
        wire.NonfiniteEvent(step=23, tensor="3", kind="activation"),
    ]


class Twice(nn.Module):
    """Calls one module twice per forward pass, with a spike between the calls."""

    def __init__(self, spike: Spike) -> None:
        super().__init__()
        self.shared, self.spike = nn.Linear(8, 8), spike

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared(self.spike(self.shared(x)))


@pytest.mark.usefixtures("both_paths")
def test_a_module_called_twice_fires_when_either_call_does(
    server: FakeServer, make_run: MakeRun
) -> None:
    spike = Spike(at=[4])
    model = nn.Sequential(nn.Linear(4, 8), Twice(spike))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    run = make_run()
    run.watch(model, optimizer, every=10, gradients=False)
    _train(model, optimizer, 8, spike=spike, tolerant=True)
    assert run.flush(5)
    # Slots in the order first run: 0, 1.shared, 1.spike; the first call of 1.shared
    # was finite at step 4, its second not.
    assert server.nonfinite() == [
        wire.NonfiniteEvent(step=4, tensor="1.shared", kind="activation", also=["1.spike"])
    ]


def test_an_incident_in_the_last_steps_goes_out_at_close(
    server: FakeServer, make_run: MakeRun
) -> None:
    spike = Spike(at=[6])
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2), spike)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    run = make_run()
    run.watch(model, optimizer, every=100)
    _train(model, optimizer, 7, spike=spike, tolerant=True)  # step 6 never ends
    run.close(5)
    assert server.nonfinite() == [wire.NonfiniteEvent(step=6, tensor="3", kind="activation")]


def test_a_failing_sentinel_disables_itself_not_the_watch(
    server: FakeServer, make_run: MakeRun, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from layerwatch.capture import sentinel

    def broken(self: sentinel.Sentinel, name: str, tensor: torch.Tensor) -> None:
        raise RuntimeError("broken")

    monkeypatch.setattr(sentinel.Sentinel, "check_activation", broken)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    run = make_run()
    with caplog.at_level(logging.WARNING, logger="layerwatch"):
        watch = run.watch(model, optimizer, every=2)
        _train(model, optimizer, 5)
    assert run.flush(5)
    assert watch.active
    assert sorted(server.stats()[("0", "activation")]) == [0, 2, 4]
    warnings = [r for r in caplog.records if "sentinel" in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.filterwarnings("ignore:Synchronization debug mode is a prototype:UserWarning")
def test_the_sentinel_never_synchronises_with_the_gpu(
    server: FakeServer, make_run: MakeRun
) -> None:
    """Checks on every step, folds at each step's end, reads at captured steps: all with
    any host sync an error, under float32 and bfloat16 autocast; the event still comes
    out (a sync would have raised in the sentinel and disabled it)."""
    spike = Spike(at=[7])
    model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), spike, nn.Linear(128, 10)).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(32, 64, device="cuda")
    run = make_run(flush_secs=60, batch_size=100_000)  # the sender waits for flush()
    watch = run.watch(model, optimizer, every=5)

    def step(index: int, dtype: torch.dtype) -> None:
        spike.step = index
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            loss = model(x).square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step(0, torch.float32)  # warm-up: first calls allocate and may sync
    torch.cuda.synchronize()
    try:
        torch.cuda.set_sync_debug_mode("error")  # any host sync now raises
        for index in range(1, 12):
            step(index, torch.bfloat16 if index % 2 else torch.float32)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert watch.active
    assert run.flush(10)
    [event] = server.nonfinite()
    assert (event.step, event.tensor, event.kind) == (7, "2", "activation")
    assert event.also[0] == "3"


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning")
def test_a_compiled_model_keeps_its_graph_and_its_gradients_name_the_step(
    server: FakeServer, make_run: MakeRun
) -> None:
    """Under torch.compile the output checks are left out (they would break the graph
    on every step); the gradients, checked at the optimizer step outside the graph,
    still name the exact step."""
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run = make_run()
    run.watch(model, optimizer, every=4)
    compiled = torch.compile(model)
    for step in range(6):
        x = torch.randn(4, 8)
        if step == 3:  # an uncaptured step
            x[0, 0] = torch.nan
        compiled(x).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert run.flush(5)
    [event] = server.nonfinite()
    assert (event.step, event.tensor, event.kind) == (3, "0.weight", "grad")
    assert "2.weight" in event.also
    assert not {"0", "1", "2"} & set(event.also)  # no output was checked in the graph


def _count_host_sums(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """Record the shape of every tensor the host path sums."""
    summed: list[tuple[int, ...]] = []
    finite_on_host = sentinel._finite_on_host

    def counting(tensor: torch.Tensor) -> bool:
        summed.append(tuple(tensor.shape))
        return finite_on_host(tensor)

    monkeypatch.setattr(sentinel, "_finite_on_host", counting)
    return summed


def test_on_the_cpu_a_healthy_step_sums_only_the_models_output(
    server: FakeServer, make_run: MakeRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    summed = _count_host_sums(monkeypatch)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    run = make_run()
    run.watch(model, optimizer, every=5)
    _train(model, optimizer, 12)
    assert run.flush(5)
    assert summed == [(8, 2)] * 12  # one sum per step, of the (batch, 2) output
    assert server.nonfinite() == []


def test_on_the_cpu_a_module_called_outside_the_model_is_checked_at_the_step(
    server: FakeServer, make_run: MakeRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    summed = _count_host_sums(monkeypatch)
    spike = Spike(at=[3])
    encoder = nn.Sequential(nn.Linear(4, 8), spike)
    model = nn.Sequential(encoder, nn.ReLU(), nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    run = make_run()
    run.watch(model, optimizer, every=10)
    torch.manual_seed(0)
    for step in range(6):
        spike.step = step
        # The training loop calls the encoder itself, then the rest of the model
        hidden = encoder(torch.randn(8, 4))
        out = model[2](model[1](hidden))
        torch.nan_to_num(out, nan=0.0).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert run.flush(5)
    assert summed[:4] == [(8, 8), (8, 8), (8, 8), (8, 2)]  # each output on its own
    assert server.nonfinite() == [
        wire.NonfiniteEvent(step=3, tensor="0.1", kind="activation", also=["1", "2"])
    ]


class Masked(nn.Module):
    """A NaN born inside the model and removed before its output."""

    def __init__(self, spike: Spike) -> None:
        super().__init__()
        self.spike, self.head = spike, nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.nan_to_num(self.spike(x), nan=0.0))


@pytest.mark.usefixtures("both_paths")
def test_a_nan_the_model_removes_itself_is_seen_on_accelerators_only(
    server: FakeServer, make_run: MakeRun, request: pytest.FixtureRequest
) -> None:
    """The host path's documented blind spot: it sums the model's output only."""
    spike = Spike(at=[2])
    model = Masked(spike)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    run = make_run()
    run.watch(model, optimizer, every=10)
    for step in range(4):
        spike.step = step
        model(torch.randn(8, 4)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert run.flush(5)
    on_device = request.node.callspec.params["both_paths"] == "device"
    expected = [wire.NonfiniteEvent(step=2, tensor="spike", kind="activation")]
    assert server.nonfinite() == (expected if on_device else [])
