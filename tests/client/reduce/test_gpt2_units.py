"""A tiny GPT-2 watched end to end: `Conv1D` units are its output features, and the
head tied to the token embedding is counted once in the model's size."""

from __future__ import annotations

import httpx
import pytest
import torch

import layerwatch

transformers = pytest.importorskip("transformers")


def test_gpt2_attention_projection_has_one_unit_per_output_feature(
    live_server: str, api: httpx.Client
) -> None:
    config = transformers.GPT2Config(
        vocab_size=50, n_positions=16, n_embd=32, n_layer=1, n_head=2,
        attn_implementation="eager",
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)  # random weights, built from the config
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    tokens = torch.randint(0, 50, (2, 16))
    with layerwatch.Run(live_server, project="gpt2", name="tiny") as run:
        run.watch(model, optimizer, every=1, weights=False, gradients=False, histograms=None)
        model(tokens, labels=tokens).loss.backward()
        optimizer.step()
        run_id = run.id
    expected = {"transformer.h.0.attn.c_attn": 96, "transformer.h.0.mlp.c_fc": 128}
    for tensor, units in expected.items():
        answer = api.get(f"/runs/{run_id}/unit-means", params={"tensor": tensor})
        assert answer.raise_for_status().json()["units"] == units, tensor  # not 16 positions
    [tree] = api.get(f"/runs/{run_id}/model").raise_for_status().json()["data"]
    assert tree["params"] == sum(p.numel() for p in model.parameters())  # wte once
