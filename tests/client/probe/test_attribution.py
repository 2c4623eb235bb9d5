"""Integrated-gradient attributions of probe samples (Captum), through `run_probe`."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

import layerwatch
from layerwatch import wire
from layerwatch.capture.selection import select_leaves
from layerwatch.errors import ConfigError
from layerwatch.probe.capture import ProbeSet, run_probe
from layerwatch.probe.prober import Prober

pytest.importorskip("captum")


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_digits()
    return torch.tensor(data.data, dtype=torch.float32) / 16.0, torch.tensor(data.target)


def trained_mlp(x: torch.Tensor, y: torch.Tensor) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 10)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(30):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model


def attributions_of(probes: list[wire.Probe]) -> wire.ProbeAttributions:
    [found] = [p.attributions for p in probes if p.attributions is not None]
    return found


def values(found: wire.ProbeAttributions) -> np.ndarray:
    return np.frombuffer(found.values, "<f4").reshape(found.shape)


def test_attributions_explain_the_label_logit_and_leave_the_model_alone(digits) -> None:
    x, y = digits
    model = trained_mlp(x[:512], y[:512])
    nn.functional.cross_entropy(model(x[:32]), y[:32]).backward()  # .grad left by the user
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    rng = torch.get_rng_state()

    probes = run_probe(model, ProbeSet(x[:100], y[:100]), select_leaves(model), step=3,
                       attributions=6, attribution_steps=64, batch_size=50)  # fmt: skip

    found = attributions_of(probes)
    assert probes[0].attributions is found  # with the labels, in the first payload
    assert (found.shape, found.steps) == ([6, 64], 64)
    targets = np.frombuffer(found.targets, "<i4")
    assert targets.tolist() == y[:6].tolist()
    # Completeness: the shares add up to the target logit's rise from the zero baseline.
    model.eval()
    with torch.no_grad():
        rise = model(x[:6]) - model(torch.zeros_like(x[:6]))
    model.train()
    expected = rise[torch.arange(6), y[:6]].numpy()
    np.testing.assert_allclose(values(found).sum(1), expected, rtol=1e-2, atol=1e-2)
    assert found.deltas is not None
    assert max(abs(d) for d in found.deltas) < 1e-2
    # The model is as it was: weights, running statistics, .grad, modes, RNG.
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    for name, param in model.named_parameters():
        assert torch.equal(param.grad, grads[name]), name
    assert model.training
    assert torch.equal(torch.get_rng_state(), rng)


def test_without_labels_the_predicted_class_is_explained(digits) -> None:
    x, y = digits
    model = trained_mlp(x[:512], y[:512])
    probes = run_probe(model, ProbeSet(x[:20]), select_leaves(model), step=0, attributions=3)
    found = attributions_of(probes)
    predictions = np.frombuffer(probes[0].predictions or b"", "<i4")
    assert np.frombuffer(found.targets, "<i4").tolist() == predictions[:3].tolist()


def test_attributions_of_images_keep_the_input_shape(digits) -> None:
    x, y = digits
    images = x.view(-1, 1, 8, 8)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(256, 10))  # fmt: skip
    probes = run_probe(model, ProbeSet(images[:10], y[:10]), select_leaves(model), step=0,
                       attributions=4, attribution_steps=8)  # fmt: skip
    found = attributions_of(probes)
    assert found.shape == [4, 1, 8, 8]
    assert np.isfinite(values(found)).all()


def test_unexplainable_probes_still_send_their_layers(digits, caplog) -> None:
    x, _ = digits
    torch.manual_seed(0)
    regressor = nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 1))  # no logits
    probes = run_probe(regressor, ProbeSet(x[:10]), select_leaves(regressor), step=0,
                       attributions=2)  # fmt: skip
    assert all(p.attributions is None for p in probes)
    assert len([layer for p in probes for layer in p.layers]) == 3
    assert "labels or logits" in caplog.text


def test_watch_checks_attribution_options(digits, monkeypatch) -> None:
    x, y = digits

    def submit(probe: wire.Probe, size: int) -> bool:
        return True

    options = layerwatch.Probe(x[:10], y[:10], attributions=4, attribution_steps=16)
    assert (options.attributions, options.attribution_steps) == (4, 16)
    Prober(options, submit)
    with pytest.raises(ConfigError, match="0-64"):
        layerwatch.Probe(x[:10], y[:10], attributions=65)
    with pytest.raises(ConfigError, match="one float tensor"):
        Prober(layerwatch.Probe((x[:10], x[:10]), y[:10], attributions=2), submit)
    with pytest.raises(ConfigError, match="attribution_steps"):
        layerwatch.Probe(x[:10], y[:10], attributions=2, attribution_steps=0)
    monkeypatch.setitem(sys.modules, "captum.attr", None)  # as if Captum were not installed
    with pytest.raises(ConfigError, match=r"layerwatch\[attribution\]"):
        Prober(layerwatch.Probe(x[:10], y[:10], attributions=2), submit)
