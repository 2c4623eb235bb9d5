"""Wrapped models and optimizers: watched inside their wrappers, under the user's names."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest
import torch
import torch.distributed as dist
from torch import nn

import layerwatch

if TYPE_CHECKING:
    from tests.client.conftest import FakeServer

MakeRun = Callable[..., layerwatch.Run]
NAMES = {"0", "1", "2", "0.weight", "0.bias", "2.weight", "2.bias"}


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def train(model: nn.Module, optimizer: object, steps: int) -> None:
    for _ in range(steps):
        model(torch.randn(5, 4)).square().mean().backward()
        optimizer.step()  # type: ignore[attr-defined]
        optimizer.zero_grad()  # type: ignore[attr-defined]


@pytest.fixture
def process_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    store = dist.FileStore(str(tmp_path_factory.mktemp("dist") / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_data_parallel_wrappers_keep_the_module_names(
    server: FakeServer, make_run: MakeRun, process_group: None
) -> None:
    model = mlp()
    ddp = nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
    run = make_run(every=1)
    wrapped = nn.DataParallel(ddp)  # wrappers of wrappers
    model.cpu()  # where CUDA is, DataParallel moved the model to it; this test trains on the CPU
    watch = run.watch(wrapped, optimizer)
    assert watch.model is model
    assert watch.name == "Sequential"
    train(ddp, optimizer, 2)
    assert run.flush(5)
    assert {name for name, _ in server.stats()} == NAMES
    [tree] = server.models()
    assert (tree.name, tree.modules[1].path, tree.modules[1].inputs) == (
        "Sequential",
        "0",
        [[5, 4]],
    )


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning")
def test_watching_a_compiled_model_keeps_the_module_names(
    server: FakeServer, make_run: MakeRun
) -> None:
    model = mlp()
    compiled = torch.compile(model)
    optimizer = torch.optim.SGD(compiled.parameters(), lr=0.1)
    run = make_run(every=2)
    watch = run.watch(compiled, optimizer)
    assert watch.model is model
    train(compiled, optimizer, 3)
    assert run.flush(5)
    stats = server.stats()
    assert {name for name, _ in stats} == NAMES  # not `_orig_mod.0`
    assert sorted(stats[("0", "activation")]) == [0, 2]
    assert [tree.name for tree in server.models()] == ["Sequential"]


class AcceleratedOptimizer(torch.optim.Optimizer):
    """The shape of accelerate's wrapper: an Optimizer subclass that never calls
    `Optimizer.__init__` and forwards `step()` to `.optimizer`."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    @property
    def param_groups(self) -> list[dict[str, object]]:  # type: ignore[override]
        return self.optimizer.param_groups

    def step(self, closure: Callable[[], float] | None = None) -> None:  # type: ignore[override]
        self.optimizer.step(closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none)


class LightningOptimizer:
    """The shape of Lightning's wrapper: not an Optimizer, the real one in `_optimizer`."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self._optimizer = optimizer

    def step(self, closure: Callable[[], float] | None = None) -> None:
        self._optimizer.step(closure=closure)

    def zero_grad(self) -> None:
        self._optimizer.zero_grad()


@pytest.mark.parametrize("wrap", [AcceleratedOptimizer, LightningOptimizer])
def test_optimizer_wrappers_are_unwrapped(
    server: FakeServer, make_run: MakeRun, wrap: Callable[[torch.optim.Optimizer], object]
) -> None:
    model = mlp()
    inner = torch.optim.SGD(model.parameters(), lr=0.1)
    run = make_run(every=1)
    watch = run.watch(model, wrap(inner))  # type: ignore[arg-type]
    assert watch.optimizer is inner
    train(model, wrap(inner), 2)
    assert run.current_step == 2
    assert run.flush(5)
    assert sorted(server.stats()[("0.weight", "grad")]) == [0, 1]


def test_an_object_that_is_no_optimizer_is_refused(make_run: MakeRun) -> None:
    run = make_run()
    with pytest.raises(layerwatch.ConfigError, match=r"`optimizer` must be a torch\.optim"):
        run.watch(mlp(), object())  # type: ignore[arg-type]
