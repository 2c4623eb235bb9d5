from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
import torch
from torch import nn

import layerwatch
import layerwatch.capture.watch
import layerwatch.reduce.statistics
from layerwatch import wire

if TYPE_CHECKING:
    from tests.client.conftest import FakeServer

MakeRun = Callable[..., layerwatch.Run]
LEAVES = ["0", "1", "2"]


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: int = 5) -> None:
    model(torch.randn(batch, 4)).square().mean().backward()
    optimizer.step()
    optimizer.zero_grad()


def train_step_on(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor) -> None:
    model(x).square().mean().backward()
    optimizer.step()
    optimizer.zero_grad()


def steps_of(server: FakeServer, name: str) -> list[int]:
    return sorted(server.stats().get((name, "activation"), {}))


def test_optimizer_steps_number_the_records(server: FakeServer, make_run: MakeRun) -> None:
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run = make_run(every=1)
    run.watch(model, optimizer)
    first_input = torch.randn(5, 4)
    expected = layerwatch.reduce.statistics.activation_stats(model[0](first_input)).tolist()
    model(first_input).sum().backward()
    optimizer.step()
    optimizer.zero_grad()
    train_step(model, optimizer)
    train_step(model, optimizer)
    assert run.current_step == 3
    assert run.flush(5)
    for name in LEAVES:
        assert steps_of(server, name) == [0, 1, 2]
    step0 = server.stats()[("0", "activation")][0]
    assert [step0[s] for s in wire.STAT_NAMES] == pytest.approx(expected, rel=1e-6)


def test_run_step_numbers_the_records_without_optimizer(
    server: FakeServer, make_run: MakeRun
) -> None:
    model = mlp()
    run = make_run(every=2)
    run.watch(model)
    for _ in range(5):
        model(torch.randn(3, 4)).sum().backward()
        run.step()
    assert run.current_step == 5
    assert run.flush(5)
    assert steps_of(server, "2") == [0, 2, 4]


def test_every_overrides_the_run_default(server: FakeServer, make_run: MakeRun) -> None:
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run = make_run(every=1)
    watch = run.watch(model, optimizer, every=3)
    assert watch.every == 3
    for _ in range(7):
        train_step(model, optimizer)
    assert run.flush(5)
    assert steps_of(server, "0") == [0, 3, 6]


def test_gradient_accumulation_records_the_first_micro_batch(
    server: FakeServer, make_run: MakeRun
) -> None:
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run = make_run(every=1)
    run.watch(model, optimizer)
    for _ in range(3):
        for batch in (2, 6):  # two micro-batches, told apart by their size
            model(torch.randn(batch, 4)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert run.flush(5)
    stats = server.stats()
    for name, width in zip(LEAVES, (8, 8, 3), strict=True):
        per_step = stats[(name, "activation")]
        assert sorted(per_step) == [0, 1, 2]  # one record per module per step
        assert all(row["numel"] == 2 * width for row in per_step.values())


def test_forward_passes_without_grad_record_nothing(server: FakeServer, make_run: MakeRun) -> None:
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run = make_run(every=1)
    run.watch(model, optimizer)
    with torch.no_grad():
        model(torch.randn(7, 4))  # evaluation before training: not step 0's activations
    with torch.inference_mode():
        model(torch.randn(7, 4))
    train_step(model, optimizer, batch=5)
    with torch.no_grad():
        model(torch.randn(7, 4))  # evaluation only, during step 1: no record
    assert run.flush(5)
    assert steps_of(server, "0") == [0]
    assert server.stats()[("0", "activation")][0]["numel"] == 5 * 8


def test_scalars_take_the_current_step(server: FakeServer, make_run: MakeRun) -> None:
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run = make_run()
    run.watch(model, optimizer)
    run.log({"loss": 1.5})
    train_step(model, optimizer)
    run.log({"loss": torch.tensor(0.5)})
    run.log({"val": 3}, step=0)
    assert run.flush(5)
    assert server.scalars() == {"loss": {0: 1.5, 1: 0.5}, "val": {0: 3.0}}


def test_include_and_exclude_select_leaf_modules(make_run: MakeRun) -> None:
    model = nn.Sequential()
    model.add_module("enc", nn.Sequential(nn.Linear(2, 2), nn.GELU()))
    model.add_module("head", nn.Linear(2, 1))
    run = make_run()

    def names(**selection: object) -> tuple[str, ...]:
        with run.watch(model, **selection) as watch:  # type: ignore[arg-type]
            return watch.names

    assert names() == ("enc.0", "enc.1", "head")
    assert names(include="enc.*") == ("enc.0", "enc.1")
    assert names(include=["head", "enc.1"]) == ("enc.1", "head")
    assert names(exclude=("enc.*",)) == ("head",)
    assert names(include="enc") == ("enc",)  # a module with children, named alone
    assert run.watch(nn.Linear(2, 2)).names == ("Linear",)  # a leaf model is named by class
    with pytest.raises(layerwatch.ConfigError, match="nothing of"):
        run.watch(model, include="decoder.*")
    with pytest.raises(layerwatch.ConfigError):
        run.watch(model, every=0)
    with pytest.raises(layerwatch.ConfigError):
        run.watch("not a model")  # type: ignore[arg-type]


def snapshot(model: nn.Module) -> dict[str, object]:
    return {
        name: (sorted(vars(module)), {k: v.clone() for k, v in module.state_dict().items()})
        for name, module in model.named_modules()
    }


def assert_no_hooks(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    for module in model.modules():
        assert not module._forward_hooks
        assert not module._forward_hooks_with_kwargs
        assert not module._forward_hooks_always_called
        assert not module._forward_pre_hooks
        assert not module._backward_hooks
    assert not optimizer._optimizer_step_post_hooks
    assert not optimizer._optimizer_step_pre_hooks


def test_remove_leaves_model_and_optimizer_as_before(make_run: MakeRun) -> None:
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = snapshot(model)
    run = make_run(every=1)
    watch = run.watch(model, optimizer)
    assert watch.active
    assert all(len(model[int(n)]._forward_hooks) == 2 for n in LEAVES)  # + the tree's
    assert len(optimizer._optimizer_step_post_hooks) == 1
    assert len(optimizer._optimizer_step_pre_hooks) == 1
    with torch.no_grad():
        model(torch.randn(2, 4))
    watch.remove()
    watch.remove()  # idempotent
    assert not watch.active
    assert_no_hooks(model, optimizer)
    after = snapshot(model)
    assert before.keys() == after.keys()
    for name in before:
        (attrs_before, state_before), (attrs_after, state_after) = before[name], after[name]
        assert attrs_before == attrs_after, name
        assert state_before.keys() == state_after.keys()
        assert all(torch.equal(state_before[k], state_after[k]) for k in state_before)


def test_closing_the_run_removes_every_watch(make_run: MakeRun) -> None:
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run = make_run()
    first = run.watch(model, optimizer, exclude="2")
    run.watch(model, optimizer, include="2")  # shares the optimizer's step hook
    assert len(optimizer._optimizer_step_post_hooks) == 1
    first.remove()
    assert len(optimizer._optimizer_step_post_hooks) == 1  # still used by the second
    run.close()
    assert_no_hooks(model, optimizer)


def test_a_second_watch_of_a_model_must_not_overlap(make_run: MakeRun) -> None:
    model = mlp()
    run = make_run()
    first = run.watch(model, torch.optim.SGD(model.parameters(), lr=0.1), include="0")
    other = torch.optim.Adam(model.parameters())
    with pytest.raises(layerwatch.ConfigError, match=r"`Sequential` is already watched \(0, "):
        run.watch(model, other)
    assert not other._optimizer_step_post_hooks
    assert [len(m._forward_hooks) for m in model] == [2, 1, 1]  # + the tree's; none left
    second = run.watch(model, every=100, exclude="0")  # the rest, at another interval
    assert (first.name, second.name) == ("Sequential", "Sequential")  # one model, one name
    assert second.tensor_names == ("1", "2")  # bare: the run watches one model
    first.remove()
    assert run.watch(model, include="0").names == ("0",)  # free again


def test_run_step_is_ignored_when_the_optimizer_counts(
    make_run: MakeRun, caplog: pytest.LogCaptureFixture
) -> None:
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run = make_run()
    run.watch(model, optimizer)
    train_step(model, optimizer)
    with caplog.at_level(logging.WARNING, logger="layerwatch"):
        run.step()
        run.step()
    assert run.current_step == 1
    assert len([r for r in caplog.records if "run.step() ignored" in r.getMessage()]) == 1


def test_failing_hook_disables_its_watch_once(
    server: FakeServer,
    make_run: MakeRun,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(output: object) -> torch.Tensor:
        raise RuntimeError("boom")

    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run = make_run(every=1)
    monkeypatch.setattr(layerwatch.capture.watch, "first_float_tensor", broken)
    watch = run.watch(model, optimizer, weights=False, gradients=False)
    with caplog.at_level(logging.WARNING, logger="layerwatch"):
        for _ in range(3):
            train_step(model, optimizer)  # training goes on
    assert not watch.active
    assert len([r for r in caplog.records if "disabling the watch" in r.getMessage()]) == 1
    assert run.current_step == 3
    assert run.flush(5)
    assert server.stats() == {}


class Pair(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.argmax(-1), x * 2


class Keyed(nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"ids": x.argmax(-1), "hidden": x + 1}


class Indices(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.argmax(-1)


def test_structured_outputs_use_the_first_float_tensor(
    server: FakeServer, make_run: MakeRun
) -> None:
    model = nn.ModuleDict({"pair": Pair(), "keyed": Keyed(), "indices": Indices()})
    run = make_run(every=1)
    run.watch(model)
    x = torch.ones(2, 3, requires_grad=True)
    for module in model.values():
        module(x)
    assert run.flush(5)
    stats = server.stats()
    assert stats[("pair", "activation")][0]["mean"] == 2.0
    assert stats[("keyed", "activation")][0]["mean"] == 2.0
    assert ("indices", "activation") not in stats  # integer output: skipped


def test_tensor_metadata_is_sent_once(server: FakeServer, make_run: MakeRun) -> None:
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run = make_run(every=1)
    run.watch(model, optimizer)
    for _ in range(3):
        train_step(model, optimizer, batch=5)
        assert run.flush(5)  # one batch per step
    infos = [(t.name, t.kind) for b in server.batches.values() for t in b.tensors]
    assert len(server.batches) == 3
    params = [f"{n}.{p}" for n in ("0", "2") for p in ("bias", "weight")]
    assert sorted(infos) == sorted(
        [(n, "activation") for n in LEAVES] + [(p, k) for p in params for k in ("weight", "grad")]
    )
    assert server.tensors()[("0.weight", "grad")] == wire.TensorInfo(
        name="0.weight", kind="grad", module_type="Linear", shape=[8, 4], dtype="float32"
    )
    assert server.tensors()[("0", "activation")] == wire.TensorInfo(
        name="0", kind="activation", module_type="Linear", shape=[5, 8], dtype="float32"
    )
    assert server.tensors()[("1", "activation")].module_type == "ReLU"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.filterwarnings("ignore:Synchronization debug mode is a prototype:UserWarning")
def test_hooks_never_synchronise_with_the_gpu(server: FakeServer, make_run: MakeRun) -> None:
    """Full capture (activations, weights, gradients, histograms, unit means, weight
    change) in forward hooks and optimizer step hooks, with any host sync an error."""
    model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 10)).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(32, 64, device="cuda")
    big = torch.randn(300, 1000, device="cuda")  # sampled histogram: > 65,536 elements
    run = make_run(every=1, flush_secs=60, batch_size=100_000)  # the sender waits for flush()
    watch = run.watch(model, optimizer, name="net")
    identity = nn.Identity()
    run.watch(identity, weights=False, gradients=False, name="big")  # sees `big`
    big.requires_grad_()
    identity(big)
    train_step_on(model, optimizer, x)  # warm-up: first calls allocate and may sync
    torch.cuda.synchronize()
    for dtype in (torch.float32, torch.bfloat16):
        try:
            torch.cuda.set_sync_debug_mode("error")  # any host sync now raises
            with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
                loss = model(x).square().mean()
                identity(big)
            run.log({"loss": loss})
            loss.backward()
            optimizer.step()  # pre- and post-hooks: weights, gradients, weight change
            optimizer.zero_grad()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert watch.active  # a sync would have raised in a hook and disabled the watch
    assert run.flush(10)
    # two models in the run: their tensors are named `<model>/<module>`
    assert steps_of(server, "net/1") == [0, 1, 2]
    assert sorted(server.stats()[("net/0.weight", "grad")]) == [0, 1, 2]
    assert sorted(server.rows("weight_changes")[("net/2.weight", "weight")]) == [0, 1, 2]
    assert sorted(server.stats()[("big/Identity", "activation")]) == [0, 1, 2]
    assert sorted(server.scalars()["loss"]) == [1, 2]


def test_attention_blocks_and_named_blocks_are_recorded(
    server: FakeServer, make_run: MakeRun
) -> None:
    torch.manual_seed(3)
    layer = nn.TransformerEncoderLayer(4, 2, dim_feedforward=8, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    run = make_run(every=1)
    with run.watch(model, include="*self_attn*") as watch:
        assert watch.names == ("layers.0.self_attn", "layers.1.self_attn")  # no out_proj
        assert "layers.0.self_attn.out_proj.weight" in watch.parameters
    with run.watch(model, include=nn.TransformerEncoderLayer, gradients=False) as watch:
        assert watch.names == ("layers.0", "layers.1")
        x = torch.randn(2, 3, 4)
        out = model(x)
        out.sum().backward()
        run.step()
    assert run.flush(5)
    stats = server.stats()
    mean = stats[("layers.1", "activation")][0]["mean"]
    assert mean == pytest.approx(out.mean().item(), abs=1e-6)  # ~0 after a LayerNorm
    assert ("layers.0.self_attn", "activation") not in stats  # watched and removed unused
