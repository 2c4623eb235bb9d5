from __future__ import annotations

import httpx
import torch
from torch import nn

import layerwatch
from layerwatch.capture.model_tree import owned_parameters


class TiedLM(nn.Module):
    """A language model whose head reuses the embedding matrix (GPT-2's weight tying)."""

    def __init__(self, vocab: int = 50, width: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.mix = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.mix(self.embed(tokens))))


def test_a_shared_parameter_is_counted_once_at_its_first_owner() -> None:
    model = TiedLM()
    counts = {path: sum(p.numel() for p in params) for path, _, params in owned_parameters(model)}
    assert counts == {"": 0, "embed": 50 * 16, "mix": 16 * 16 + 16, "head": 0}
    assert sum(counts.values()) == sum(p.numel() for p in model.parameters())  # 1,072, not 1,872


def test_the_model_view_of_a_tied_model_counts_its_real_size(
    live_server: str, api: httpx.Client
) -> None:
    model = TiedLM()
    with layerwatch.Run(live_server, project="tied", name="tied-lm") as run:
        run.watch(model, every=1)
        model(torch.randint(0, 50, (2, 5)))
        run_id = run.id
    [tree] = api.get(f"/runs/{run_id}/model").raise_for_status().json()["data"]
    assert tree["params"] == sum(p.numel() for p in model.parameters()) == 1072
    by_path = {m["path"]: m for m in tree["modules"]}
    assert by_path["embed"]["params"] == 800
    assert by_path["head"]["params"] == 0  # its weight is the embedding's
