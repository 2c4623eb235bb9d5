"""The run's step and when parameters are read: closures, several optimizers."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
import torch
from torch import nn

import layerwatch

if TYPE_CHECKING:
    from tests.client.conftest import FakeServer

MakeRun = Callable[..., layerwatch.Run]


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
        lambda ps: torch.optim.Adam(ps, lr=0.01),
        lambda ps: torch.optim.LBFGS(ps, lr=0.5, max_iter=4),
    ],
    ids=["sgd", "adam", "lbfgs"],
)
def test_a_closure_step_records_the_gradients_it_applies(
    server: FakeServer,
    make_run: MakeRun,
    make_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    optimizer = make_optimizer(list(model.parameters()))
    run = make_run(every=1)
    run.watch(model, optimizer)
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    applied: list[float] = []  # ||grad|| of 0.weight at each step's first evaluation
    first_outputs: list[float] = []
    for _ in range(4):
        calls = 0

        def full_closure() -> torch.Tensor:
            nonlocal calls
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            if calls == 0:
                assert model[0].weight.grad is not None
                applied.append(torch.linalg.vector_norm(model[0].weight.grad).item())
                first_outputs.append(model[0](x).mean().item())
            calls += 1
            return loss

        optimizer.step(full_closure)
        assert calls >= 1
    assert run.current_step == 4
    assert run.flush(5)
    stats = server.stats()
    grads = stats[("0.weight", "grad")]
    assert sorted(grads) == [0, 1, 2, 3]  # step 0 too, and once per step
    assert [grads[s]["l2"] for s in range(4)] == pytest.approx(applied, rel=1e-5)
    activations = stats[("0", "activation")]
    assert [activations[s]["mean"] for s in range(4)] == pytest.approx(first_outputs, rel=1e-5)


def test_closure_passed_by_keyword(server: FakeServer, make_run: MakeRun) -> None:
    """Lightning's precision plugins call `optimizer.step(closure=...)`."""
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run = make_run(every=1)
    run.watch(model, optimizer)
    norms = []
    for _ in range(2):

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = model(torch.randn(5, 2)).square().mean()
            loss.backward()
            norms.append(torch.linalg.vector_norm(model.weight.grad).item())
            return loss

        optimizer.step(closure=closure)
    assert run.flush(5)
    grads = server.stats()[("weight", "grad")]
    assert [grads[s]["l2"] for s in (0, 1)] == pytest.approx(norms, rel=1e-5)


def gan_step(
    g: nn.Module,
    d: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    real: torch.Tensor,
    *,
    critic_steps: int = 1,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The usual loop: the discriminator scores real then fake images and steps, then
    the generator steps. Returns D's first-layer output on the real batch and D's
    first gradient of each of its steps."""
    d_grads = []
    first_real = d[0](real).detach()
    for _ in range(critic_steps):
        opt_d.zero_grad()
        fake = g(torch.randn(real.shape[0], 2))
        loss_d = d(real).mean() - d(fake.detach()).mean()
        loss_d.backward()
        assert d[0].weight.grad is not None
        d_grads.append(d[0].weight.grad.clone())
        opt_d.step()
    opt_g.zero_grad()
    d(g(torch.randn(real.shape[0], 2))).mean().backward()
    opt_g.step()
    return first_real, d_grads


def test_a_gan_two_models_two_optimizers(server: FakeServer, make_run: MakeRun) -> None:
    torch.manual_seed(1)
    g = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 3))
    d = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    opt_g = torch.optim.Adam(g.parameters(), lr=0.01)
    opt_d = torch.optim.SGD(d.parameters(), lr=0.01)
    run = make_run(every=1)
    watch_g = run.watch(g, opt_g)  # first: its optimizer counts the steps
    watch_d = run.watch(d, opt_d)
    assert (watch_g.name, watch_d.name) == ("Sequential", "Sequential-2")
    real = torch.randn(6, 3)
    expected = []
    for _ in range(3):
        expected.append(gan_step(g, d, opt_g, opt_d, real, critic_steps=2))
    assert run.current_step == 3
    assert run.flush(5)
    stats = server.stats()
    names = {name for name, _ in stats}
    assert names == {
        f"{model}/{tensor}"
        for model in ("Sequential", "Sequential-2")
        for tensor in ("0", "1", "2", "0.weight", "0.bias", "2.weight", "2.bias")
    }
    for step, (first_real, d_grads) in enumerate(expected):
        # D's first forward pass of the step: the real batch; its first step's gradients
        activation = stats[("Sequential-2/0", "activation")][step]
        assert activation["mean"] == pytest.approx(first_real.mean().item(), rel=1e-5)
        grad = stats[("Sequential-2/0.weight", "grad")][step]
        assert grad["l2"] == pytest.approx(torch.linalg.vector_norm(d_grads[0]).item(), rel=1e-5)
    assert sorted(stats[("Sequential/0.weight", "grad")]) == [0, 1, 2]
    trees = {tree.name: tree for tree in server.models()}
    assert sorted(trees) == ["Sequential", "Sequential-2"]
    assert trees["Sequential-2"].modules[1].inputs == [[6, 3]]  # D's own tree
    watch_g.remove()
    assert not opt_g._optimizer_step_post_hooks
    assert len(opt_d._optimizer_step_post_hooks) == 1
    gan_step(g, d, opt_g, opt_d, real)
    assert run.current_step == 4  # D's optimizer counts now
    run.close()
    assert not opt_d._optimizer_step_post_hooks


def test_naming_a_second_model_renames_the_first(
    server: FakeServer, make_run: MakeRun, caplog: pytest.LogCaptureFixture
) -> None:
    encoder, head = nn.Linear(3, 3), nn.Linear(3, 1)
    optimizer = torch.optim.SGD([*encoder.parameters(), *head.parameters()], lr=0.1)
    run = make_run(every=1)
    first = run.watch(encoder, optimizer, name="encoder")
    assert first.tensor_names == ("Linear",)  # a leaf model: its module is named by class
    head(encoder(torch.randn(2, 3))).sum().backward()
    optimizer.step()
    with pytest.raises(layerwatch.ConfigError, match="another model is watched as `encoder`"):
        run.watch(head, name="encoder")
    with pytest.raises(layerwatch.ConfigError, match="watched as `encoder` in this run, not"):
        run.watch(encoder, name="other")
    run.watch(head, optimizer, name="head")
    assert "named `encoder/<module>` from step 1 on" in caplog.text
    head(encoder(torch.randn(2, 3))).sum().backward()
    optimizer.step()
    assert run.flush(5)
    stats = server.stats()
    assert sorted(stats[("Linear", "activation")]) == [0]  # before the second model
    assert sorted(stats[("encoder/Linear", "activation")]) == [1]
    assert sorted(stats[("head/Linear", "activation")]) == [1]
    assert sorted(stats[("encoder/weight", "grad")]) == [1]
    assert server.tensors()[("encoder/weight", "grad")].shape == [3, 3]
