"""Probes of recurrent layers, nested tensors and autocast, end to end against a real server.

`nn.TransformerEncoder` with a padding mask hands its layers nested tensors in eval
mode under `no_grad` (the probe's forward); an LSTM given a packed batch returns a
`PackedSequence`; the probe's own float16 bookkeeping must not run under a caller's
CPU autocast.
"""

from __future__ import annotations

import logging

import httpx
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import layerwatch
from layerwatch import wire

NESTED_WARNING = "ignore:The PyTorch API of nested tensors:UserWarning"
F16 = {"rtol": 2e-3, "atol": 2e-3}


def stored_probe(api: httpx.Client, run_id: str, step: int) -> wire.Probe:
    body = api.get(f"/runs/{run_id}/probes/{step}").raise_for_status().content
    return wire.Probe.model_validate_json(body)


def features(layer: wire.ProbeLayer) -> torch.Tensor:
    values = np.frombuffer(layer.features, dtype="<f2").reshape(layer.features_shape)
    return torch.from_numpy(values.astype(np.float32))


class Encoder(nn.Module):
    """A tiny classifier over padded sequences: (N, T, F) floats and an (N, T) pad mask."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        layer = nn.TransformerEncoderLayer(width, 2, 16, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2)  # enable_nested_tensor=True
        self.head = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x, src_key_padding_mask=pad)  # (N, T, F), zeros where padded
        return self.head(h[:, 0])


def padded_batch(n: int = 12, t: int = 6, width: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    lengths = torch.randint(2, t + 1, (n,))
    lengths[0] = t
    pad = torch.arange(t)[None, :] >= lengths[:, None]  # (N, T) True where padded
    return torch.randn(n, t, width), pad


@pytest.mark.filterwarnings(NESTED_WARNING)
def test_a_transformer_encoder_with_a_padding_mask_is_probed(
    live_server: str, api: httpx.Client
) -> None:
    model = Encoder()
    x, pad = padded_batch()
    y = torch.arange(12) % 3
    inner: dict[str, torch.Tensor] = {}
    hook = model.encoder.layers[0].linear1.register_forward_hook(
        lambda m, a, out: inner.setdefault("linear1", out)
    )
    model.eval()
    with torch.no_grad():
        model(x, pad)
    hook.remove()
    assert inner["linear1"].is_nested  # what the probe's hooks see
    with layerwatch.Run(live_server, project="ragged", name="encoder") as run:
        run.watch(model, probe=((x, pad), y))
        assert run.probe() == 1
        run_id = run.id
    probe = stored_probe(api, run_id, 0)
    layers = {layer.name: layer for layer in probe.layers}
    # the attention blocks are recorded whole (their out_proj is never called)
    assert probe.skipped == []
    assert {f"encoder.layers.{i}.self_attn" for i in range(2)} <= set(layers)
    assert not any(name.endswith("out_proj") for name in layers)
    linear1 = layers["encoder.layers.0.linear1"]
    assert (linear1.features_shape, linear1.reduced, linear1.source_shape) == (
        [12, 16], "averaged", [6, 16],
    )  # fmt: skip
    # each sample's mean over its own tokens: padding never enters
    expected = torch.stack([part.mean(0) for part in inner["linear1"].unbind()])
    torch.testing.assert_close(features(layers["encoder.layers.0.linear1"]), expected, **F16)
    assert layers["head"].features_shape == [12, 3]


@pytest.mark.filterwarnings(NESTED_WARNING)
def test_capture_summarises_nested_activations_by_their_real_tokens(
    live_server: str, api: httpx.Client
) -> None:
    model = Encoder()
    model.eval().requires_grad_(False)  # a frozen encoder: nested tensors with grad on
    x, pad = padded_batch()
    tokens = int((~pad).sum())
    with layerwatch.Run(live_server, project="ragged", name="frozen-encoder") as run:
        watch = run.watch(model, every=1, weights=False, gradients=False)
        model(x, pad)
        run.step()
        run_id = run.id
        assert "disabled" not in repr(watch)
    series = api.get(
        f"/runs/{run_id}/series",
        params={"tensor": "encoder.layers.0.linear1", "stat": "numel"},
    ).raise_for_status()
    assert series.json()["values"] == [tokens * 16]  # (sum T_i, F): no padding


class Recurrent(nn.Module):
    """An LSTM over packed sequences of their own lengths, and a seq-first GRU."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lstm = nn.LSTM(4, 6, batch_first=True)
        self.gru = nn.GRU(4, 5)  # (T, N, F): not batch-first
        self.head = nn.Linear(6 + 5, 3)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(packed)  # h: (1, N, 6)
        _, g = self.gru(x.transpose(0, 1))  # g: (1, N, 5)
        return self.head(torch.cat([h[-1], g[-1]], dim=1))


def test_a_packed_sequence_lstm_is_probed_and_a_seq_first_gru_is_reported(
    live_server: str, api: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    model = Recurrent()
    torch.manual_seed(2)
    x, lengths = torch.randn(10, 7, 4), torch.randint(1, 8, (10,))
    y = torch.arange(10) % 3
    with (
        caplog.at_level(logging.INFO, logger="layerwatch"),
        layerwatch.Run(live_server, project="ragged", name="lstm") as run,
    ):
        run.watch(model, probe=((x, lengths), y))
        assert run.probe() == 1
        assert run.probe() == 1  # same step: the server keeps one probe
        run_id = run.id
    probe = stored_probe(api, run_id, 0)
    layers = {layer.name: layer for layer in probe.layers}
    lstm = layers["lstm"]
    assert (lstm.features_shape, lstm.reduced) == ([10, 6], "averaged")
    model.eval()
    with torch.no_grad():
        expected = torch.stack(
            [model.lstm(x[i : i + 1, : int(n)])[0][0].mean(0) for i, n in enumerate(lengths)]
        )  # each sample alone, over its own steps
    torch.testing.assert_close(features(lstm), expected, **F16)
    reason = "output (7, 10, 5) is not batch-first"
    assert [(s.name, s.reason) for s in probe.skipped] == [("gru", reason)]
    listed = api.get(f"/runs/{run_id}/probes").raise_for_status().json()["data"]
    assert listed[0]["skipped"] == [{"name": "gru", "reason": reason}]
    warned = [r for r in caplog.records if "leaves out" in r.getMessage()]
    assert len(warned) == 1  # once per layer and reason, though probed twice
    assert warned[0].levelno == logging.WARNING
    assert f"`gru` ({reason})" in warned[0].getMessage()
    assert warned[0].getMessage().count("layerwatch") == 1
    missing = api.get(f"/runs/{run_id}/probes/0", params={"layer": "gru"})
    assert missing.status_code == 404
    assert f"the client left it out: {reason}" in missing.json()["detail"]


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))


def test_run_probe_under_cpu_bf16_autocast(live_server: str, api: httpx.Client) -> None:
    model = mlp()
    torch.manual_seed(3)
    x, y = torch.randn(20, 4), torch.arange(20) % 3
    with layerwatch.Run(live_server, project="autocast", name="probe") as run:
        run.watch(model, probe=(x, y))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert run.probe() == 1
            assert torch.is_autocast_enabled("cpu")  # the caller's context is left alone
        run_id = run.id
    probe = stored_probe(api, run_id, 0)
    with torch.no_grad():
        expected = model[0](x)  # float32: the probe runs with autocast off
    torch.testing.assert_close(features(probe.layers[0]), expected, **F16)
    assert [layer.name for layer in probe.layers] == ["0", "1", "2"]


def test_probe_every_inside_an_autocast_training_step(live_server: str, api: httpx.Client) -> None:
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.manual_seed(4)
    x, y = torch.randn(20, 4), torch.arange(20) % 3
    with layerwatch.Run(live_server, project="autocast", name="probe-every") as run:
        run.watch(model, optimizer, every=1, probe=layerwatch.Probe(x, y, every=2))
        for _ in range(4):
            with torch.autocast("cpu", dtype=torch.bfloat16):  # optimizer step included
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
        run_id = run.id
        assert run.counters.dropped == 0
    steps = [p["step"] for p in api.get(f"/runs/{run_id}/probes").raise_for_status().json()["data"]]
    assert steps == [2, 4]
    assert len(stored_probe(api, run_id, 4).layers) == 3
