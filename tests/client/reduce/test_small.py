"""The NumPy path for small CPU tensors gives the numbers of the PyTorch path."""

from __future__ import annotations

import pytest
import torch

from layerwatch.reduce.small import SMALL, relative_change_small, summarize_small
from layerwatch.reduce.statistics import Summarizer, relative_change

CASES = {
    "normal": torch.randn(64, 10, generator=torch.Generator().manual_seed(1)),
    "relu": torch.randn(32, 16, generator=torch.Generator().manual_seed(2)).relu(),
    "negative": -torch.rand(100, generator=torch.Generator().manual_seed(3)) - 0.5,
    "constant": torch.full((7, 3), 2.5),
    "zeros": torch.zeros(5, 4),
    "wide": torch.randn(4, 8, 6, 6, generator=torch.Generator().manual_seed(4)) * 1e3,
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_small_tensors_match_the_torch_path(name: str) -> None:
    x = CASES[name]
    units = 1 if x.dim() > 1 else None
    small = summarize_small(x, units=units, bins=64)
    assert small is not None
    reference = Summarizer(bins=64).summarize(x, units=units, sync=False)  # the device path
    assert torch.allclose(small.stats, reference.stats, rtol=1e-5, atol=1e-6)
    assert small.counts is not None
    assert reference.counts is not None
    # Bin edges computed in float64 here, float32 there: a value on an edge may move.
    assert int(small.counts.sum()) == x.numel()
    assert (small.counts - reference.counts).abs().sum() <= 2
    if units is not None:
        assert small.units is not None
        assert reference.units is not None
        assert torch.allclose(small.units, reference.units, rtol=1e-5, atol=1e-5)


def test_non_finite_tensors_take_the_general_path() -> None:
    x = torch.ones(10)
    x[3] = float("nan")
    assert summarize_small(x, units=None, bins=8) is None
    summary = Summarizer(bins=8).summarize(x, units=None, sync=True)
    assert summary.stats[7] == 1  # one non-finite element, counted by the general path


def test_the_summarizer_takes_the_small_path_up_to_its_size_only() -> None:
    big = torch.randn(SMALL + 1)
    summary = Summarizer(bins=8).summarize(big, units=None, sync=True)
    assert int(summary.counts.sum()) == big.numel()  # type: ignore[union-attr]


def test_relative_change_matches() -> None:
    old = torch.randn(300, generator=torch.Generator().manual_seed(5))
    new = old + 1e-3 * torch.randn(300, generator=torch.Generator().manual_seed(6))
    norm = torch.linalg.vector_norm(old)
    expected = torch.linalg.vector_norm(new - old) / norm
    assert relative_change_small(new, old, norm).item() == pytest.approx(expected.item(), rel=1e-4)
    assert relative_change(new, old, norm).item() == pytest.approx(expected.item(), rel=1e-4)
    assert relative_change_small(new, old, torch.tensor(0.0)).item() == float("inf")
