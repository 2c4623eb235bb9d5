"""A zoo of tiny models trained a few steps each with the real client against a real
server: the exact tensor names stored, gradients at the step that applied them, and
no record dropped."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest
import torch
from torch import nn

import layerwatch

pytestmark = pytest.mark.slow

STEPS = 3


@pytest.fixture
def run(live_server: str) -> Iterator[layerwatch.Run]:
    with layerwatch.Run(live_server, project=f"zoo-{uuid.uuid4().hex[:8]}", every=1) as run:
        yield run
    assert run.counters.dropped == 0


def stored(api: httpx.Client, run: layerwatch.Run) -> set[tuple[str, str]]:
    assert run.flush(10)
    assert run.counters.dropped == 0
    tensors = api.get(f"/runs/{run.id}/tensors").raise_for_status().json()["data"]
    return {(t["name"], t["kind"]) for t in tensors}


def grad_l2(api: httpx.Client, run: layerwatch.Run, tensor: str) -> dict[int, float]:
    params = {"tensor": tensor, "kind": "grad", "stat": "l2"}
    series = api.get(f"/runs/{run.id}/series", params=params).raise_for_status().json()
    return dict(zip(series["steps"], series["values"], strict=True))


def expected(activations: list[str], params: list[str]) -> set[tuple[str, str]]:
    kinds = ("weight", "grad")
    return {(a, "activation") for a in activations} | {(p, k) for p in params for k in kinds}


def params_of(model: nn.Module, prefix: str = "") -> list[str]:
    return [prefix + name for name, p in model.named_parameters() if p.requires_grad]


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_of: Callable[[], torch.Tensor],
    watched: str,
) -> list[float]:
    """STEPS optimizer steps; returns ||grad|| of parameter `watched` at each."""
    param = model.get_parameter(watched)
    norms = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss_of().backward()
        assert param.grad is not None
        norms.append(torch.linalg.vector_norm(param.grad).item())
        optimizer.step()
    return norms


def test_bidirectional_lstm(run: layerwatch.Run, api: httpx.Client) -> None:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("lstm", nn.LSTM(3, 4, batch_first=True, bidirectional=True))
    head = nn.Linear(8, 1)
    optimizer = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=0.01)
    run.watch(model, optimizer)
    x = torch.randn(2, 5, 3)
    norms = train(model, optimizer, lambda: head(model(x)[0]).mean(), "lstm.weight_hh_l0")
    assert stored(api, run) == expected(["lstm"], params_of(model))
    assert list(grad_l2(api, run, "lstm.weight_hh_l0").values()) == pytest.approx(norms, rel=1e-5)


def test_transformer_encoder_with_padding_mask(run: layerwatch.Run, api: httpx.Client) -> None:
    torch.manual_seed(1)
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run.watch(model, optimizer)
    x = torch.randn(2, 4, 8)
    mask = torch.tensor([[False, False, True, True], [False, False, False, False]])
    norms = train(
        model, optimizer, lambda: model(x, src_key_padding_mask=mask).square().mean(),
        "layers.0.self_attn.in_proj_weight",
    )  # fmt: skip
    leaves = ["linear1", "dropout", "linear2", "norm1", "norm2", "dropout1", "dropout2"]
    activations = ["layers.0.self_attn"] + [f"layers.0.{leaf}" for leaf in leaves]
    assert stored(api, run) == expected(activations, params_of(model))  # no out_proj output
    grads = grad_l2(api, run, "layers.0.self_attn.in_proj_weight")
    assert list(grads.values()) == pytest.approx(norms, rel=1e-5)


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x) + x)


def test_residual_cnn_with_in_place_relu(run: layerwatch.Run, api: httpx.Client) -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), Residual(), nn.Flatten(), nn.Linear(32, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run.watch(model, optimizer)
    x = torch.randn(3, 1, 4, 4)
    norms = train(model, optimizer, lambda: model(x).square().mean(), "1.conv.weight")
    assert stored(api, run) == expected(["0", "1.conv", "1.relu", "2", "3"], params_of(model))
    assert list(grad_l2(api, run, "1.conv.weight").values()) == pytest.approx(norms, rel=1e-5)


def test_gan(run: layerwatch.Run, api: httpx.Client) -> None:
    torch.manual_seed(3)
    g = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 3))
    d = nn.Sequential(nn.Linear(3, 4), nn.LeakyReLU(0.2), nn.Linear(4, 1))
    opt_g = torch.optim.Adam(g.parameters(), lr=0.01)
    opt_d = torch.optim.Adam(d.parameters(), lr=0.01)
    run.watch(g, opt_g, name="generator")
    run.watch(d, opt_d, name="discriminator")
    real, d_norms = torch.randn(4, 3), []
    for _ in range(STEPS):
        opt_d.zero_grad()
        fake = g(torch.randn(4, 2))
        (d(fake.detach()).mean() - d(real).mean()).backward()
        d_norms.append(torch.linalg.vector_norm(d[0].weight.grad).item())
        opt_d.step()
        opt_g.zero_grad()
        (-d(fake).mean()).backward()
        opt_g.step()
    assert run.current_step == STEPS
    want = set()
    for name, model in (("generator", g), ("discriminator", d)):
        want |= expected([f"{name}/{m}" for m in "012"], params_of(model, f"{name}/"))
    assert stored(api, run) == want
    grads = grad_l2(api, run, "discriminator/0.weight")
    assert list(grads.values()) == pytest.approx(d_norms, rel=1e-5)
    trees = str(api.get(f"/runs/{run.id}/model").raise_for_status().json())
    assert "'generator'" in trees
    assert "'discriminator'" in trees


def test_gradient_accumulation(run: layerwatch.Run, api: httpx.Client) -> None:
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run.watch(model, optimizer)

    def loss() -> torch.Tensor:
        for _ in range(2):  # the first micro-batch's backward; `train` runs the second
            model(torch.randn(2, 3)).mean().backward()
        return model(torch.randn(2, 3)).mean()

    norms = train(model, optimizer, loss, "0.weight")
    assert stored(api, run) == expected(["0", "1", "2"], params_of(model))
    assert list(grad_l2(api, run, "0.weight").values()) == pytest.approx(norms, rel=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning")
def test_compiled(run: layerwatch.Run, api: httpx.Client) -> None:
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    compiled = torch.compile(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run.watch(compiled, optimizer)
    x = torch.randn(2, 3)
    norms = train(model, optimizer, lambda: compiled(x).square().mean(), "0.weight")
    assert stored(api, run) == expected(["0", "1", "2"], params_of(model))
    assert list(grad_l2(api, run, "0.weight").values()) == pytest.approx(norms, rel=1e-5)


def test_frozen_weights(run: layerwatch.Run, api: httpx.Client) -> None:
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    model[0].requires_grad_(False)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    run.watch(model, optimizer)
    x = torch.randn(2, 3)
    norms = train(model, optimizer, lambda: model(x).square().mean(), "2.weight")
    want = expected(["0", "1", "2"], ["2.weight", "2.bias"])
    want |= {("0.weight", "weight"), ("0.bias", "weight")}  # frozen: weights, no gradients
    assert stored(api, run) == want
    assert list(grad_l2(api, run, "2.weight").values()) == pytest.approx(norms, rel=1e-5)


def test_lbfgs_closure(run: layerwatch.Run, api: httpx.Client) -> None:
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    optimizer = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=3)
    run.watch(model, optimizer)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    first: list[float] = []
    for _ in range(STEPS):
        calls = 0

        def closure() -> torch.Tensor:
            nonlocal calls
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            if calls == 0:
                first.append(torch.linalg.vector_norm(model[0].weight.grad).item())
            calls += 1
            return loss

        optimizer.step(closure)
    assert stored(api, run) == expected(["0", "1", "2"], params_of(model))
    grads = grad_l2(api, run, "0.weight")
    assert sorted(grads) == list(range(STEPS))
    assert list(grads.values()) == pytest.approx(first, rel=1e-5)
