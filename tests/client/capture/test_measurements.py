"""What `run.watch()` captures: weights, gradients, weight change, histograms, unit
means and the model tree, checked against values computed here with NumPy."""

from __future__ import annotations

import array
import logging
import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from torch import nn

import layerwatch

if TYPE_CHECKING:
    from tests.client.conftest import FakeServer

MakeRun = Callable[..., layerwatch.Run]


def norm(a: torch.Tensor) -> float:
    return float(np.linalg.norm(a.detach().double().numpy()))


def floats(packed: bytes) -> list[float]:
    return array.array("f", packed).tolist()


def counts(packed: bytes) -> list[int]:
    return array.array("I", packed).tolist()


def test_gradients_and_weights_once_per_optimizer_step_with_accumulation(
    server: FakeServer, make_run: MakeRun
) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    run = make_run(every=2)
    run.watch(model, optimizer)
    expected: dict[int, dict[str, dict[str, float]]] = {}
    previous: dict[str, torch.Tensor] = {}
    for step in range(6):
        for _ in range(3):  # three micro-batches accumulate into one step
            model(torch.randn(4, 6)).square().mean().backward()
        if step % 2 == 0:
            expected[step] = {}
            for name, p in model.named_parameters():
                assert p.grad is not None
                grad = p.grad.detach().double().numpy()
                w = p.detach().clone()
                expected[step][name] = {
                    "grad_mean": grad.mean(), "grad_l2": np.linalg.norm(grad),
                    "weight_std": w.double().numpy().std(),
                    "since_init": norm(w - init[name]) / norm(init[name]),
                    "since_prev": (
                        norm(w - previous[name]) / norm(previous[name])
                        if name in previous else math.nan
                    ),
                }  # fmt: skip
                previous[name] = w
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        optimizer.step()
        optimizer.zero_grad()
        if step % 2 == 0:
            for name, p in model.named_parameters():
                ratio = norm(p.detach() - before[name]) / norm(before[name])
                expected[step][name]["update_ratio"] = ratio
    assert run.flush(5)
    stats, changes = server.stats(), server.rows("weight_changes")
    for name in init:
        assert sorted(stats[(name, "grad")]) == [0, 2, 4]  # one record per optimizer step
        assert sorted(changes[(name, "weight")]) == [0, 2, 4]
        for step, per_name in expected.items():
            want = per_name[name]
            grad, weight = stats[(name, "grad")][step], stats[(name, "weight")][step]
            assert grad["mean"] == pytest.approx(want["grad_mean"], rel=1e-4, abs=1e-7)
            assert grad["l2"] == pytest.approx(want["grad_l2"], rel=1e-4)
            assert weight["std"] == pytest.approx(want["weight_std"], rel=1e-4)
            change = changes[(name, "weight")][step]
            for column in ("since_prev", "since_init", "update_ratio"):
                if math.isnan(want[column]):
                    assert math.isnan(change[column]), (name, step, column)
                else:
                    assert change[column] == pytest.approx(want[column], rel=1e-3, abs=1e-7)


def test_without_an_optimizer_run_step_reads_the_gradients(
    server: FakeServer, make_run: MakeRun
) -> None:
    torch.manual_seed(1)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run = make_run(every=1)
    watch = run.watch(model)  # the run is told about steps by run.step()
    grads = []
    for _ in range(3):
        model(torch.randn(5, 3)).sum().backward()
        assert model.weight.grad is not None
        grads.append(model.weight.grad.clone())
        optimizer.step()
        optimizer.zero_grad()  # set_to_none: the post-accumulate hook kept a reference
        run.step()
    assert run.flush(5)
    stats = server.stats()[("weight", "grad")]
    assert [stats[s]["mean"] for s in range(3)] == pytest.approx([g.mean().item() for g in grads])
    changes = server.rows("weight_changes")[("weight", "weight")]
    assert all(math.isnan(changes[s]["update_ratio"]) for s in range(3))  # update not seen
    watch.remove()
    assert not model.weight._post_accumulate_grad_hooks


def test_histograms_count_every_finite_value(server: FakeServer, make_run: MakeRun) -> None:
    model = nn.Identity()
    run = make_run(every=1)
    run.watch(model, histograms=10, weights=False, gradients=False)
    x = torch.tensor([[0.0, 1.0, 2.0, 3.0, 10.0, math.nan, math.inf, -1.0]], requires_grad=True)
    model(x)
    run.step()
    assert run.flush(5)
    [row] = server.rows("histograms")[("Identity", "activation")].values()
    finite = np.array([0, 1, 2, 3, 10, -1], dtype=np.float64)
    want, _ = np.histogram(finite, bins=10, range=(-1, 10))
    assert counts(row["counts"]) == want.tolist()
    assert (row["lo"], row["hi"], row["sample_size"]) == (-1.0, 10.0, None)
    [stats] = server.stats()[("Identity", "activation")].values()
    assert stats["nonfinite"] == 2


def test_large_tensors_histograms_are_sampled_unless_exact(
    server: FakeServer, make_run: MakeRun
) -> None:
    torch.manual_seed(2)
    x = torch.randn(300, 1000, requires_grad=True)  # 300k elements > 65,536
    for exact in (False, True):
        model = nn.Identity()
        run = make_run(every=1)
        histograms = layerwatch.Histograms(sample_size=0 if exact else 65_536)
        run.watch(model, histograms=histograms, weights=False, gradients=False)
        model(x)
        run.step()
        assert run.flush(5)
        [batch] = [b for b in server.batches.values() if b.histograms]
        server.batches.clear()
        [block] = batch.histograms
        got = np.array(counts(block.counts[0]), dtype=np.float64)
        assert block.sample_size == [None if exact else 65_536]
        assert got.sum() == (x.numel() if exact else 65_536)
        want, _ = np.histogram(x.detach().numpy(), bins=64, range=(block.lo[0], block.hi[0]))
        if exact:
            assert np.abs(got - want).sum() <= 4  # float32 bin edges vs float64
        else:  # a uniform sample: the shape is right within sampling noise
            assert np.abs(got / got.sum() - want / want.sum()).sum() < 0.05


def test_unit_means_per_feature_and_per_channel(server: FakeServer, make_run: MakeRun) -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 4))
    run = make_run(every=1)
    run.watch(model, weights=False, gradients=False)
    x = torch.randn(5, 2, 6, 6, requires_grad=True)
    conv = model[0](x).detach().numpy()
    linear = model(x).detach().numpy()
    run.step()
    assert run.flush(5)
    units = server.rows("unit_means")
    got_conv = floats(units[("0", "activation")][0]["values"])
    got_linear = floats(units[("3", "activation")][0]["values"])
    assert got_conv == pytest.approx(conv.mean(axis=(0, 2, 3)).tolist(), rel=1e-5, abs=1e-6)
    assert got_linear == pytest.approx(linear.mean(axis=0).tolist(), rel=1e-5, abs=1e-6)
    assert ("2", "activation") in units  # Flatten's (N, 48) output: 48 features


def test_model_tree_is_sent_once_with_shapes(server: FakeServer, make_run: MakeRun) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.Sequential(nn.ReLU(), nn.Linear(8, 2)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run = make_run(every=1)
    run.watch(model, optimizer)
    for _ in range(3):
        model(torch.randn(7, 4)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert run.flush(5)
    [tree] = server.models()
    assert tree.name == "Sequential"
    by_path = {m.path: m for m in tree.modules}
    assert list(by_path) == ["", "0", "1", "1.0", "1.1"]
    assert (by_path["0"].type, by_path["0"].params, by_path["0"].trainable) == ("Linear", 40, 40)
    assert by_path[""].params == 0  # the container owns none itself
    assert by_path["1.1"].inputs == [[7, 8]]
    assert by_path[""].outputs == [[7, 2]]
    # the tree's hooks are gone; each leaf keeps its activation hook, the model the
    # sentinel's pair (its output stands for the leaves' outputs)
    leaves = {m for m in model.modules() if next(m.children(), None) is None}
    assert all(len(m._forward_hooks) == (m in leaves or m is model) for m in model.modules())
    assert [len(m._forward_pre_hooks) for m in model.modules()] == [1, 0, 0, 0, 0]


def test_select_by_type_and_regex(make_run: MakeRun) -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))
    run = make_run()
    with run.watch(model, include=[nn.Conv2d, nn.Linear]) as watch:
        assert watch.names == ("0", "3")
        assert watch.parameters == ("0.weight", "0.bias", "3.weight", "3.bias")
    with run.watch(model, exclude=nn.ReLU, include=re.compile(r"[0-2]")) as watch:
        assert watch.names == ("0", "2")
    with run.watch(model, include=[nn.Linear, "1"]) as watch:  # any item may match
        assert watch.names == ("1", "3")
    with pytest.raises(layerwatch.ConfigError, match="nothing of Sequential"):
        run.watch(model, exclude=[nn.ReLU, re.compile(r"\d")])  # only the parameterless root
    with pytest.raises(layerwatch.ConfigError, match="bins"):
        run.watch(model, histograms=513)
    with pytest.raises(layerwatch.ConfigError, match="bins"):
        run.watch(model, histograms=layerwatch.Histograms(bins=0))
    with pytest.raises(layerwatch.ConfigError, match="sample_size"):
        run.watch(model, histograms=layerwatch.Histograms(sample_size=-1))
    with pytest.raises(layerwatch.ConfigError, match="histograms"):
        run.watch(model, histograms=1.5)  # type: ignore[arg-type]
    with pytest.raises(layerwatch.ConfigError, match="include"):
        run.watch(model, include=[3])  # type: ignore[list-item]
    with pytest.raises(layerwatch.ConfigError, match="exclude"):
        run.watch(model, exclude=int)  # type: ignore[arg-type]


def test_bf16_autocast_on_cpu(server: FakeServer, make_run: MakeRun) -> None:
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run = make_run(every=1)
    run.watch(model, optimizer)
    x = torch.randn(16, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        first = model[0](x)  # what the hook saw (an eval of the same weights)
    out.float().square().mean().backward()
    optimizer.step()
    assert run.flush(5)
    assert server.tensors()[("0", "activation")].dtype == "bfloat16"
    stats = server.stats()[("0", "activation")][0]
    assert stats["mean"] == pytest.approx(first.float().mean().item(), abs=1e-3)
    assert ("0.weight", "grad") in server.stats()


def test_a_failing_reduction_is_logged_once_and_counted(
    server: FakeServer,
    make_run: MakeRun,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import layerwatch.reduce.statistics

    def broken(self: object, tensor: torch.Tensor, *, units: int | None, sync: bool) -> None:
        raise RuntimeError("boom")

    model = nn.Linear(2, 2)
    run = make_run(every=1)
    run.watch(model, weights=False, gradients=False)
    monkeypatch.setattr(layerwatch.reduce.statistics.Summarizer, "summarize", broken)
    with caplog.at_level(logging.WARNING, logger="layerwatch"):
        for _ in range(3):
            model(torch.randn(3, 2, requires_grad=True))
            run.step()
        assert run.flush(5)
    assert len([r for r in caplog.records if "reduction failed" in r.getMessage()]) == 1
    assert run.counters.dropped == 3 * 3  # statistics, histogram and unit means, 3 steps


def test_probe_every_n_steps_and_on_demand(server: FakeServer, make_run: MakeRun) -> None:
    from sklearn.datasets import load_iris

    x_all, y_all = load_iris(return_X_y=True)
    x = torch.tensor(x_all, dtype=torch.float32)
    y = torch.tensor(y_all)
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    run = make_run(every=5)
    run.watch(model, optimizer, probe=layerwatch.Probe(x[::3], y[::3], every=3))
    for _ in range(8):
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert model.training
    assert run.probe() == 1  # at the current step, 8
    assert run.flush(5)
    assert sorted({p.step for p in server.probes}) == [3, 6, 8]
    last = [p for p in server.probes if p.step == 8]
    assert sorted(layer.name for p in last for layer in p.layers) == ["0", "1", "2", "3"]
    [with_labels] = [p for p in last if p.labels is not None]
    labels = array.array("i", with_labels.labels).tolist()
    assert labels == y[::3].tolist()
    assert with_labels.predictions is not None
    predictions = torch.tensor(array.array("i", with_labels.predictions).tolist())
    model.eval()
    with torch.no_grad():
        want = model(x[::3]).argmax(-1)
    assert torch.equal(predictions, want)
    [hidden] = [layer for p in last for layer in p.layers if layer.name == "1"]
    assert hidden.features_shape == [50, 16]


def test_probe_needs_inputs(make_run: MakeRun) -> None:
    run = make_run()
    with pytest.raises(layerwatch.ConfigError, match="every"):
        layerwatch.Probe(torch.randn(4, 2), every=0)
    with pytest.raises(layerwatch.ConfigError):
        run.watch(nn.Linear(2, 2), probe=(torch.randn(4, 2), torch.randn(4)))  # float labels


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning")
def test_compiled_model(server: FakeServer, make_run: MakeRun) -> None:
    """Uncaptured steps run the compiled graph; captured ones a variant that leaves the
    graph at each watched module (see `Watch._make_hook`); both train the same."""
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run = make_run(every=2)
    run.watch(model, optimizer)
    compiled = torch.compile(model)
    inputs = [torch.randn(4, 8) for _ in range(5)]
    first_layer = []
    for x in inputs:
        first_layer.append(model[0](x).mean().item())
        compiled(x).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert run.flush(5)
    stats = server.stats()
    assert sorted(stats[("0", "activation")]) == [0, 2, 4]
    assert sorted(stats[("2.weight", "grad")]) == [0, 2, 4]
    for step in (0, 2, 4):
        assert stats[("0", "activation")][step]["mean"] == pytest.approx(
            first_layer[step], rel=1e-5
        )
    assert [tree.name for tree in server.models()] == ["Sequential"]
