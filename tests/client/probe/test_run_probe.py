from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits, load_iris
from torch import nn
from torch.nn.functional import adaptive_avg_pool2d

from layerwatch import wire
from layerwatch.capture.selection import select_leaves
from layerwatch.errors import ConfigError
from layerwatch.probe.capture import ProbeSet, check_probe_options, run_probe

F16 = {"rtol": 1e-3, "atol": 1e-3}  # float16 keeps about three decimal digits


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0  # (1797, 64) in [0, 1]
    return x, torch.tensor(data.target)


@pytest.fixture(scope="module")
def iris() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_iris()
    x = torch.tensor(data.data, dtype=torch.float32)
    return (x - x.mean(0)) / x.std(0), torch.tensor(data.target)  # (150, 4), 3 classes


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10)
    )


def cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
        nn.Linear(8 * 8 * 8, 10),
    )  # fmt: skip


class Tokens(nn.Module):
    """Reads a digit as 8 tokens (its rows): the embedding output is (N, T, F)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(8, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.view(-1, 8, 8))  # (N, 8, 16)
        return self.head(h.mean(1))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 3) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()


def features(layer: wire.ProbeLayer) -> torch.Tensor:
    values = np.frombuffer(layer.features, dtype="<f2").reshape(layer.features_shape)
    return torch.from_numpy(values.astype(np.float32))


def maps(layer: wire.ProbeLayer) -> torch.Tensor:
    assert layer.maps is not None
    assert layer.maps_shape is not None
    values = np.frombuffer(layer.maps, dtype="<f2").reshape(layer.maps_shape)
    return torch.from_numpy(values.astype(np.float32))


def int32s(packed: bytes | None) -> torch.Tensor:
    assert packed is not None
    return torch.from_numpy(np.frombuffer(packed, dtype="<i4").astype(np.int64))


def layers_of(probes: list[wire.Probe]) -> dict[str, wire.ProbeLayer]:
    found = [layer for probe in probes for layer in probe.layers]
    assert len({layer.name for layer in found}) == len(found)
    return {layer.name: layer for layer in found}


def eval_forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What a user would compute: the same model in eval mode, without gradients."""
    was_training = module.training
    module.eval()
    with torch.no_grad():
        out = module(x)
    module.train(was_training)
    return out


# The model as it was


def test_probe_leaves_parameters_buffers_flags_and_grads_untouched(digits) -> None:
    x, y = digits
    model = mlp()
    train(model, x[:256], y[:256])  # running statistics and num_batches_tracked move
    nn.functional.cross_entropy(model(x[:64]), y[:64]).backward()  # .grad left by the user
    model[3].eval()  # a user's choice: this Dropout stays off while training
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: (p.grad, p.grad.clone()) for n, p in model.named_parameters()}
    flags = {n: m.training for n, m in model.named_modules()}
    assert int(model[1].num_batches_tracked) == 4
    probes = run_probe(model, ProbeSet(x, y), select_leaves(model), step=5, batch_size=300)
    assert len(layers_of(probes)) == 5
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    for name, param in model.named_parameters():
        assert param.grad is grads[name][0]
        assert torch.equal(param.grad, grads[name][1])
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert flags[""]
    assert not flags["3"]


@pytest.mark.parametrize("grad_enabled", [True, False])
def test_probe_restores_the_grad_mode(iris, grad_enabled: bool) -> None:
    x, y = iris
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.set_grad_enabled(grad_enabled):
        assert run_probe(model, ProbeSet(x, y), select_leaves(model), step=0)
        assert torch.is_grad_enabled() is grad_enabled
        assert not torch.is_inference_mode_enabled()


class Noisy(nn.Module):
    """Draws from the global RNG on every forward, in eval mode too."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.01 * torch.randn_like(x)


def test_probe_leaves_the_cpu_rng_where_it_was(iris) -> None:
    x, y = iris
    model = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.5), Noisy(), nn.Linear(16, 3))
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    assert run_probe(model, ProbeSet(x, y), select_leaves(model), step=0, batch_size=32)
    assert torch.equal(torch.rand(5), expected)


class StubbornBatchNorm(nn.BatchNorm1d):
    """Stays in training mode whatever `eval()` says, as some fine-tuning code does."""

    def train(self, mode: bool = True) -> StubbornBatchNorm:
        return super().train(True)


def test_running_stats_of_a_norm_kept_training_are_put_back(iris) -> None:
    x, y = iris
    model = nn.Sequential(nn.Linear(4, 8), StubbornBatchNorm(8), nn.Linear(8, 3))
    train(model, x, y, steps=2)
    state = {k: v.clone() for k, v in model[1].state_dict().items()}
    eval_forward(model, x)  # without the probe, an eval forward moves the statistics
    assert not torch.equal(model[1].running_mean, state["running_mean"])
    model[1].load_state_dict(state)
    assert run_probe(model, ProbeSet(x, y), select_leaves(model), step=0)
    for key, value in model[1].state_dict().items():
        assert torch.equal(value, state[key]), key


class Counter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x


def test_other_buffers_changed_by_the_forward_are_logged(iris, caplog) -> None:
    x, y = iris
    model = nn.Sequential(nn.Linear(4, 3), Counter())
    with caplog.at_level(logging.WARNING, logger="layerwatch"):
        assert run_probe(model, ProbeSet(x, y), select_leaves(model), step=0, batch_size=50)
    assert [r.getMessage() for r in caplog.records if "changed buffers 1.calls" in r.message]
    assert int(model[1].calls) == 3


def test_no_hook_remains_and_the_users_hooks_stay(iris) -> None:
    x, y = iris
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    calls = []
    model[0].register_forward_hook(lambda m, a, o: calls.append(o.shape[0]))
    run_probe(model, ProbeSet(x, y), select_leaves(model), step=0, batch_size=100)
    assert calls == [100, 50]
    assert [len(m._forward_hooks) for m in model] == [1, 0, 0]


class Fails(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] < 100:  # the last chunk
            raise RuntimeError("boom")
        return x


def test_a_failing_forward_restores_everything_and_returns_nothing(iris, caplog) -> None:
    x, y = iris
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(), Fails(), nn.Linear(8, 3))
    model[1].eval()
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    with caplog.at_level(logging.WARNING, logger="layerwatch"):
        assert run_probe(model, ProbeSet(x, y), select_leaves(model), step=4, batch_size=100) == []
    assert torch.equal(torch.rand(3), expected)
    assert not any(m._forward_hooks for m in model.modules())
    assert [m.training for m in model] == [True, False, True, True]
    assert torch.is_grad_enabled()
    assert len(caplog.records) == 1
    assert "probe at step 4 failed" in caplog.records[0].message


class Cached(nn.Module):
    """Builds a table on its first forward and keeps it, as rotary embeddings do."""

    def __init__(self) -> None:
        super().__init__()
        self.table: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.table is None:
            self.table = torch.linspace(0.5, 1.5, x.shape[-1])
        return x * self.table


def test_tensors_a_probe_caches_still_train(iris) -> None:
    x, y = iris
    model = nn.Sequential(nn.Linear(4, 8), Cached(), nn.Linear(8, 3))
    assert run_probe(model, ProbeSet(x, y), select_leaves(model), step=0)
    train(model, x, y, steps=1)  # inference tensors from inference_mode() would fail here


# What a probe holds


def test_linear_features_and_predictions_match_an_eval_forward(digits) -> None:
    x, y = digits
    model = mlp()
    train(model, x[:512], y[:512])
    probes = run_probe(model, ProbeSet(x[:500], y[:500]), select_leaves(model), step=3, rank=2)
    (probe,) = probes
    assert (probe.step, probe.rank, probe.samples) == (3, 2, 500)
    layers = layers_of(probes)
    assert list(layers) == ["0", "1", "2", "3", "4"]
    first = layers["0"]
    assert (first.features_shape, first.source_shape, first.reduced) == ([500, 32], [32], "none")
    assert first.maps is None
    torch.testing.assert_close(features(first), eval_forward(model[0], x[:500]), **F16)
    logits = eval_forward(model, x[:500])
    torch.testing.assert_close(features(layers["4"]), logits, **F16)
    assert torch.equal(int32s(probe.predictions), logits.argmax(1))
    assert torch.equal(int32s(probe.labels), y[:500])


def test_wide_outputs_keep_their_first_features(digits) -> None:
    x, y = digits
    model = mlp()
    probes = run_probe(model, ProbeSet(x[:100], y[:100]), [("0", model[0])], step=0, features=5)
    layer = layers_of(probes)["0"]
    assert (layer.features_shape, layer.source_shape, layer.reduced) == (
        [100, 5],
        [32],
        "truncated",
    )
    torch.testing.assert_close(features(layer), eval_forward(model[0], x[:100])[:, :5], **F16)


def test_conv_features_are_pooled_and_maps_capped(digits) -> None:
    x, y = digits
    images = x.view(-1, 1, 8, 8)
    model = cnn()
    conv = eval_forward(model[0], images[:300])  # (300, 8, 8, 8): 512 features
    modules = [("conv", model[0]), ("relu", model[2])]
    probes = run_probe(model, ProbeSet(images[:300], y[:300]), modules, step=0,
                       features=128, maps=5, max_channels=3, map_size=4)  # fmt: skip
    layer = layers_of(probes)["conv"]
    # 8 channels x 4 x 4 = 128: the largest square that fits the budget.
    assert (layer.features_shape, layer.source_shape, layer.reduced) == (
        [300, 8, 4, 4], [8, 8, 8], "pooled"
    )  # fmt: skip
    torch.testing.assert_close(features(layer), adaptive_avg_pool2d(conv, 4), **F16)
    assert layer.maps_shape == [5, 3, 4, 4]
    torch.testing.assert_close(maps(layer), adaptive_avg_pool2d(conv[:5, :3], 4), **F16)


def test_small_conv_outputs_are_kept_whole_with_full_maps(digits) -> None:
    x, y = digits
    images = x.view(-1, 1, 8, 8)
    model = cnn()
    conv = eval_forward(model[0], images[:40])
    probes = run_probe(model, ProbeSet(images[:40], y[:40]), [("conv", model[0])], step=0,
                       batch_size=16)  # fmt: skip
    layer = layers_of(probes)["conv"]
    assert (layer.features_shape, layer.reduced, layer.maps_shape) == (
        [40, 8, 8, 8], "none", [16, 8, 8, 8]
    )  # fmt: skip
    torch.testing.assert_close(features(layer), conv, **F16)
    torch.testing.assert_close(maps(layer), conv[:16], **F16)  # 16 maps over two chunks


def test_conv_channels_beyond_the_budget_are_dropped(digits) -> None:
    x, y = digits
    images = x.view(-1, 1, 8, 8)
    model = cnn()
    probes = run_probe(model, ProbeSet(images[:50], y[:50]), [("conv", model[0])], step=0,
                       features=4, maps=0)  # fmt: skip
    layer = layers_of(probes)["conv"]
    assert (layer.features_shape, layer.reduced, layer.maps) == ([50, 4, 1, 1], "pooled", None)
    expected = eval_forward(model[0], images[:50])[:, :4].mean((2, 3), keepdim=True)
    torch.testing.assert_close(features(layer), expected, **F16)


def test_sequence_outputs_are_averaged_over_tokens(digits) -> None:
    x, y = digits
    model = Tokens()
    tokens = eval_forward(model.embed, x[:200].view(-1, 8, 8))  # (200, 8, 16)
    probes = run_probe(model, ProbeSet(x[:200], y[:200]), [("embed", model.embed)], step=0)
    layer = layers_of(probes)["embed"]
    assert (layer.features_shape, layer.source_shape, layer.reduced) == (
        [200, 16], [8, 16], "averaged"
    )  # fmt: skip
    torch.testing.assert_close(features(layer), tokens.mean(1), **F16)
    probes = run_probe(model, ProbeSet(x[:200]), [("embed", model.embed)], step=0, features=10)
    layer = layers_of(probes)["embed"]
    assert (layer.features_shape, layer.reduced) == ([200, 10], "averaged")
    torch.testing.assert_close(features(layer), tokens.mean(1)[:, :10], **F16)


class Score(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(1)  # (N,)


def test_one_value_per_sample_is_a_column_and_no_prediction(iris) -> None:
    x, y = iris
    model = nn.Sequential(nn.Linear(4, 3), Score())
    (probe,) = run_probe(model, ProbeSet(x, y), [("score", model[1])], step=0)
    layer = probe.layers[0]
    assert (layer.features_shape, layer.source_shape) == ([150, 1], [])
    torch.testing.assert_close(features(layer)[:, 0], eval_forward(model, x), **F16)
    assert probe.predictions is None
    assert probe.labels is not None


class Shapeless(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.argmax(1), x.flatten()  # integers, and no sample dimension


def test_outputs_without_per_sample_floats_are_left_out(iris) -> None:
    x, y = iris
    model = nn.Sequential(nn.Linear(4, 3), Shapeless())
    modules = [("linear", model[0]), ("shapeless", model[1]), ("never", nn.Identity())]
    probes = run_probe(model, ProbeSet(x, y), modules, step=0)
    assert list(layers_of(probes)) == ["linear"]
    assert probes[0].predictions is None  # the model's output is not (N, classes)
    assert [(s.name, s.reason) for s in probes[0].skipped] == [
        ("shapeless", "output (450,) is not batch-first"),
        ("never", "not called"),
    ]


def test_a_module_called_twice_keeps_its_first_call(iris) -> None:
    x, y = iris
    relu = nn.ReLU()
    model = nn.Sequential(nn.Linear(4, 8), relu, nn.Linear(8, 8), relu)
    probes = run_probe(model, ProbeSet(x, y), [("relu", relu)], step=0, batch_size=64)
    expected = eval_forward(nn.Sequential(model[0], relu), x)
    torch.testing.assert_close(features(layers_of(probes)["relu"]), expected, **F16)


def test_values_beyond_float16_become_infinite(iris) -> None:
    x, y = iris
    big = nn.Linear(4, 2)
    with torch.no_grad():
        big.weight.copy_(torch.tensor([[1e6, 0, 0, 0], [-1e6, 0, 0, 0]]))
        big.bias.zero_()
    probes = run_probe(big, ProbeSet(x, y), [("big", big)], step=0)
    values = features(layers_of(probes)["big"])
    beyond = x[:, 0].abs() * 1e6 > 65520  # rounds past float16's largest finite value
    assert beyond.sum() > 100
    assert torch.isinf(values[beyond]).all()
    assert torch.isfinite(values[~beyond]).all()
    assert torch.equal(values[beyond, 0], torch.sign(x[beyond, 0]) * torch.inf)


def test_chunks_give_the_result_of_one_pass(digits) -> None:
    x, y = digits
    model = mlp()
    train(model, x[:256], y[:256])
    probe_set = ProbeSet(x[:600], y[:600])
    small = run_probe(model, probe_set, select_leaves(model), step=0, batch_size=7)
    whole = run_probe(model, probe_set, select_leaves(model), step=0, batch_size=600)
    assert small[0].predictions == whole[0].predictions
    for name, layer in layers_of(whole).items():
        chunked = layers_of(small)[name]
        assert chunked.features_shape == layer.features_shape
        torch.testing.assert_close(features(chunked), features(layer), **F16)


def test_more_samples_than_the_cap_keep_the_first_ones(digits, caplog) -> None:
    x, y = digits
    assert x.shape[0] == 1797
    with caplog.at_level(logging.WARNING, logger="layerwatch"):
        probe_set = ProbeSet(x, y)
    assert probe_set.samples == 1024
    assert [r.message for r in caplog.records] == [
        "layerwatch: the probe keeps the first 1024 of its 1797 samples"
    ]
    model = mlp()
    (probe,) = run_probe(model, probe_set, [("0", model[0])], step=0)
    assert probe.samples == probe.layers[0].features_shape[0] == 1024
    assert torch.equal(int32s(probe.labels), y[:1024])
    assert ProbeSet(x, max_samples=10).samples == 10


def test_big_probes_are_split_keeping_each_layer_once(digits) -> None:
    x, y = digits
    model = mlp()
    probe_set = ProbeSet(x[:400], y[:400])
    leaves = select_leaves(model)
    # Each layer packs 400 x (32 or 10) float16: 8-26 KB; at most 30 KB a payload.
    probes = run_probe(model, probe_set, leaves, step=9, max_payload_bytes=30_000)
    assert len(probes) >= 3
    assert [p.step for p in probes] == [9] * len(probes)
    assert probes[0].labels is not None
    assert probes[0].predictions is not None
    assert all(p.labels is None and p.predictions is None for p in probes[1:])
    assert sorted(layers_of(probes)) == sorted(name for name, _ in leaves)
    for probe in probes:
        assert wire.Probe.model_validate_json(probe.model_dump_json()) == probe
        packed = sum(len(layer.features) for layer in probe.layers)
        assert packed <= 30_000 or len(probe.layers) == 1
    whole = run_probe(model, probe_set, leaves, step=9)
    assert layers_of(whole) == layers_of(probes)


class Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, pixels: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return self.fc(pixels * scale)


@pytest.mark.parametrize("as_dict", [True, False])
def test_models_taking_several_inputs(digits, as_dict: bool) -> None:
    x, y = digits
    model = Pair()
    inputs = {"pixels": x[:100], "scale": 2.0} if as_dict else (x[:100], 2.0)
    (probe,) = run_probe(model, ProbeSet(inputs, y[:100]), [("fc", model.fc)], step=0)
    expected = eval_forward(model.fc, 2.0 * x[:100])
    torch.testing.assert_close(features(probe.layers[0]), expected, **F16)
    assert torch.equal(int32s(probe.predictions), expected.argmax(1))


# Mistakes found before training


@pytest.mark.parametrize(
    ("inputs", "labels", "message"),
    [
        (torch.zeros(5, 2), torch.zeros(4, dtype=torch.long), r"need shape \(5,\)"),
        ((torch.zeros(5, 2), torch.zeros(6)), None, "disagree on the sample count"),
        (torch.zeros(5, 2), torch.zeros(5), "integer class indices"),
        (torch.zeros(5, 2), torch.zeros(5, 1, dtype=torch.long), r"need shape \(5,\)"),
        (torch.zeros(5, 2), torch.full((5,), 2**40), "fit in int32"),
        (torch.zeros(0, 2), None, "no sample"),
        (torch.tensor(1.0), None, "sample dimension"),
        ((1.0, "a"), None, "no tensor"),
        ({1: torch.zeros(5)}, None, "str keys"),
        (np.zeros((5, 2)), None, "not ndarray"),
    ],
)
def test_bad_probe_sets_raise(inputs, labels, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ProbeSet(inputs, labels)


@pytest.mark.parametrize("max_samples", [0, 4097, 1.5, True])
def test_bad_sample_caps_raise(max_samples) -> None:
    with pytest.raises(ConfigError, match="max_samples"):
        ProbeSet(torch.zeros(3, 2), max_samples=max_samples)


@pytest.mark.parametrize(
    "options",
    [{"features": 0}, {"features": 4097}, {"maps": -1}, {"batch_size": 0},
     {"map_size": 2.0}, {"maps": 4096, "max_channels": 64, "map_size": 32}],
)  # fmt: skip
def test_bad_options_raise(options: dict[str, object]) -> None:
    defaults = {"features": 1024, "maps": 16, "map_size": 32, "max_channels": 64,
                "batch_size": 256}  # fmt: skip
    with pytest.raises(ConfigError):
        check_probe_options(**{**defaults, **options})
    model = nn.Linear(2, 2)
    with pytest.raises(ConfigError):
        run_probe(model, ProbeSet(torch.zeros(3, 2)), [("m", model)], step=0, **options)


def test_duplicate_layer_names_raise() -> None:
    model = nn.Linear(2, 2)
    with pytest.raises(ConfigError, match="distinct names"):
        run_probe(model, ProbeSet(torch.zeros(3, 2)), [("m", model), ("m", model)], step=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_model_probes_host_inputs_and_keeps_the_cuda_rng(digits) -> None:
    x, y = digits
    model = nn.Sequential(nn.Linear(64, 32), nn.Dropout(), Noisy(), nn.Linear(32, 10)).cuda()
    probe_set = ProbeSet(x[:300], y[:300])
    torch.cuda.manual_seed(5)
    expected = torch.rand(4, device="cuda")
    torch.cuda.manual_seed(5)
    probes = run_probe(model, probe_set, select_leaves(model), step=0, batch_size=128)
    assert torch.equal(torch.rand(4, device="cuda"), expected)
    torch.testing.assert_close(
        features(layers_of(probes)["0"]), eval_forward(model[0], x[:300].cuda()).cpu(), **F16
    )
    assert x.device.type == "cpu"


class Sparse(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to_sparse()  # batch-first floats that the packing cannot reshape


class Branches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.side = Sparse()
        self.nested = NestedSide()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(x)
        self.side(out)
        self.nested(out)
        return out


class NestedSide(nn.Module):
    """Returns a nested tensor whose components have no common feature size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nested.nested_tensor([row[None, : 1 + i % 3] for i, row in enumerate(x)])


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")
def test_a_layer_that_cannot_be_reduced_costs_only_itself(iris) -> None:
    x, y = iris
    model = Branches()
    modules = [("fc", model.fc), ("side", model.side), ("nested", model.nested)]
    probes = run_probe(model, ProbeSet(x, y), modules, step=0, batch_size=50)
    assert list(layers_of(probes)) == ["fc"]
    reasons = {s.name: s.reason for s in probes[0].skipped}
    assert reasons["side"].startswith("its output could not be packed: RuntimeError")
    assert reasons["nested"] == "ragged output without a fixed feature size"
