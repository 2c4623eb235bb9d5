from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from layerwatch import wire
from layerwatch.reduce.statistics import (
    NUM_STATS,
    Summarizer,
    activation_stats,
    first_float_tensor,
    relative_change,
    unit_dim,
)


def reference(values: np.ndarray) -> dict[str, float]:
    """The statistics in float64 NumPy, the way `reduce` defines them."""
    x = values.astype(np.float64).reshape(-1)
    finite = x[np.isfinite(x)]
    nan = math.nan
    has = finite.size > 0
    return {
        "mean": finite.mean() if has else nan,
        "std": finite.std() if has else nan,  # ddof=0
        "min": finite.min() if has else nan,
        "max": finite.max() if has else nan,
        "abs_mean": np.abs(finite).mean() if has else nan,
        "l2": np.sqrt((finite**2).sum()) if has else nan,
        "zero_frac": (x == 0).mean() if x.size else nan,
        "nonfinite": float((~np.isfinite(x)).sum()),
        "numel": float(x.size),
    }


def named(tensor: torch.Tensor) -> dict[str, float]:
    return dict(zip(wire.STAT_NAMES, activation_stats(tensor).tolist(), strict=True))


def check(tensor: torch.Tensor, *, rtol: float = 1e-4) -> None:
    """Both paths, the one that never reads back and the CPU one that may, agree with NumPy."""
    general = activation_stats(tensor)
    fast = Summarizer(bins=None).summarize(tensor, units=None, sync=True).stats
    for stats in (general, fast):
        check_stats(tensor, stats, rtol=rtol)


def check_stats(tensor: torch.Tensor, stats: torch.Tensor, *, rtol: float) -> None:
    assert stats.shape == (NUM_STATS,)
    assert stats.dtype == torch.float32
    assert stats.device == tensor.device
    got = dict(zip(wire.STAT_NAMES, stats.tolist(), strict=True))
    expected = reference(tensor.detach().to(torch.float64).numpy())
    scale = max(abs(expected["min"]), abs(expected["max"]), 1.0) if expected["numel"] else 1.0
    for name in wire.STAT_NAMES:
        want = expected[name]
        if math.isnan(want):
            assert math.isnan(got[name]), name
        else:
            # float32 sums: errors relative to the values' magnitude, not to the result
            assert got[name] == pytest.approx(want, rel=rtol, abs=rtol * scale), name


def test_names_match_wire() -> None:
    assert len(wire.STAT_NAMES) == NUM_STATS == 9


@pytest.mark.parametrize("shape", [(1,), (7,), (128, 512), (4, 3, 5, 2)])
def test_random_normal(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    check(torch.randn(shape) * 3 + 1)


def test_nan_inf_and_zeros_excluded_or_counted() -> None:
    x = torch.tensor([1.0, math.nan, 0.0, -3.0, math.inf, -math.inf, 0.0, 2.5])
    check(x)
    stats = named(x)
    assert stats["nonfinite"] == 3
    assert stats["zero_frac"] == pytest.approx(2 / 8)
    assert stats["min"] == -3.0
    assert stats["max"] == 2.5


def test_all_nan_gives_nan_statistics() -> None:
    stats = named(torch.full((3, 4), math.nan))
    for name in ("mean", "std", "min", "max", "abs_mean", "l2"):
        assert math.isnan(stats[name]), name
    assert stats["zero_frac"] == 0
    assert stats["nonfinite"] == 12
    assert stats["numel"] == 12


def test_single_element() -> None:
    stats = named(torch.tensor([-2.0]))
    assert stats == {
        "mean": -2.0, "std": 0.0, "min": -2.0, "max": -2.0, "abs_mean": 2.0,
        "l2": 2.0, "zero_frac": 0.0, "nonfinite": 0.0, "numel": 1.0,
    }  # fmt: skip


def test_empty_tensor() -> None:
    stats = activation_stats(torch.empty(0, 5)).tolist()
    assert all(math.isnan(v) for v in stats[:7])
    assert stats[7:] == [0.0, 0.0]


def test_zero_dim_and_all_zeros() -> None:
    check(torch.tensor(3.5))
    check(torch.zeros(10, 10))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_other_float_dtypes_are_summarised_in_float32(dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    x = (torch.randn(64, 33) * 4).to(dtype)
    x[0, 0] = math.nan
    x[1, 1] = 0
    check(x, rtol=1e-3)


def test_output_of_autograd_graph_is_not_tracked() -> None:
    x = torch.randn(5, requires_grad=True)
    stats = activation_stats(x * 2)
    assert not stats.requires_grad


def test_non_contiguous_input() -> None:
    x = torch.randn(16, 32).t()[::2]
    check(x)


floats = st.floats(
    min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False, width=32
) | st.sampled_from([0.0, math.nan, math.inf, -math.inf])


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(max_dims=3, max_side=20), elements=floats))
def test_matches_numpy(values: np.ndarray) -> None:
    check(torch.from_numpy(values.copy()))


def test_first_float_tensor_of_structured_outputs() -> None:
    a = torch.ones(2)
    ints = torch.ones(2, dtype=torch.long)
    assert first_float_tensor(a) is a
    assert first_float_tensor(ints) is None
    assert first_float_tensor((ints, a)) is a
    assert first_float_tensor([None, {"h": a}]) is a
    assert first_float_tensor({"ids": ints, "logits": a}) is a
    assert first_float_tensor("text") is None
    assert first_float_tensor(((((a,),),),)) is None  # deeper than we look


def test_float32_even_with_a_float64_default() -> None:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert activation_stats(torch.randn(3, 3)).dtype == torch.float32
    finally:
        torch.set_default_dtype(previous)


@settings(max_examples=100, deadline=None)
@given(
    hnp.arrays(np.float32, hnp.array_shapes(max_dims=2, max_side=30), elements=floats),
    st.integers(1, 40),
    st.booleans(),
)
@example(np.array([1e6, -0.03125, -1e6, -0.03125], dtype=np.float32), 2, False)  # edge rounding
def test_histogram_bins_every_finite_value_once(values: np.ndarray, bins: int, sync: bool) -> None:
    summary = Summarizer(bins=bins).summarize(torch.from_numpy(values), units=None, sync=sync)
    assert summary.counts is not None
    counts = summary.counts.numpy()
    finite = values[np.isfinite(values)].astype(np.float64)
    assert counts.shape == (bins,)
    assert counts.sum() == finite.size
    assert summary.sample_size is None
    if finite.size and finite.min() < finite.max():
        lo, hi = finite.min(), finite.max()
        want, edges = np.histogram(finite, bins=bins, range=(lo, hi))
        # Bins are computed in float32: a value within its rounding of an inner edge, at
        # the range's scale, may land on either side (-0.03125 in [-1e6, 1e6] is 0 there).
        rounding = 8 * np.finfo(np.float32).eps * max(abs(lo), abs(hi), 1.0)
        near = int(sum(np.count_nonzero(np.abs(finite - e) <= rounding) for e in edges[1:-1]))
        assert np.abs(counts - want).sum() <= 2 * (near + max(1, finite.size // 100))


def test_relative_change_and_unit_dims() -> None:
    old, new = torch.tensor([3.0, 4.0]), torch.tensor([3.0, 5.0])
    assert relative_change(new, old).item() == pytest.approx(1 / 5)
    assert math.isnan(relative_change(old, torch.zeros(2)).item()) is False  # x/0 = inf
    assert unit_dim((8, 16), "Linear") == 1
    assert unit_dim((8, 3, 5, 5), "ReLU") == 1
    assert unit_dim((8, 3, 20), "Conv1d") == 1
    assert unit_dim((8, 20, 64), "Linear") == 2  # (batch, time, features)
    assert unit_dim((8,), "Linear") is None


@pytest.mark.parametrize(
    "values",
    [
        [1.0, 1.0 + 2**-20, 1.0 + 2**-19],  # a range narrow for its magnitude
        [0.0, 1e-38, 2e-38],  # bins / width would overflow float32
        [-3e38, 0.0, 3e38],  # a range near float32's limit
        [5.0, 5.0, 5.0],  # no range: everything in the first bin
    ],
)
def test_histograms_of_extreme_ranges_keep_every_value(values: list[float]) -> None:
    tensor = torch.tensor(values, dtype=torch.float32)
    for sync in (True, False):
        counts = Summarizer(bins=4).summarize(tensor, units=None, sync=sync).counts
        assert counts is not None
        assert counts.sum().item() == 3
        assert counts[0].item() >= 1  # the minimum is in the first bin
        if values[0] != values[-1]:
            assert counts[-1].item() >= 1  # and the maximum in the last


@pytest.mark.parametrize("sync", [False, True])
def test_histograms_of_subnormal_ranges(sync: bool) -> None:
    values = torch.tensor([-1e-45, 0.0, 0.0], dtype=torch.float32)  # the smallest subnormal
    summary = Summarizer(bins=2).summarize(values, units=None, sync=sync)
    assert summary.counts is not None
    assert summary.counts.tolist() == [1, 2]  # as np.histogram bins them


class Conv1D(torch.nn.Module):
    """A user's linear layer that happens to share GPT-2's class name."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(nx, nf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


@pytest.mark.parametrize(
    ("module", "dim"),
    [
        (torch.nn.Conv1d(4, 6, 3), 1),
        (torch.nn.BatchNorm1d(6), 1),
        (torch.nn.MaxPool1d(2), 1),
        (torch.nn.Dropout1d(), 1),
        (torch.nn.Linear(4, 6), 2),
        (torch.nn.LayerNorm(6), 2),
        (torch.nn.Dropout(), 2),
        (Conv1D(96, 32), 2),
    ],
)
def test_unit_dim_of_3d_outputs_follows_the_module_class(module: torch.nn.Module, dim: int) -> None:
    assert unit_dim((2, 16, 96), module) == dim
    assert unit_dim((2, 16, 96, 3), module) == 1  # 4-D outputs are channel-first
    assert unit_dim((16,), module) is None


def test_gpt2_conv1d_units_are_its_output_features() -> None:
    transformers = pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D as HfConv1D

    assert transformers is not None
    c_attn = HfConv1D(3 * 32, 32)  # GPT-2's fused q, k, v projection, n_embd=32
    out = c_attn(torch.randn(2, 16, 32))  # (B, T, 3 * n_embd)
    dim = unit_dim(out.shape, c_attn)
    assert dim == 2
    summary = Summarizer(bins=None).summarize(out, units=dim, sync=True)
    assert summary.units is not None
    assert summary.units.shape == (96,)
    np.testing.assert_allclose(summary.units.numpy(), out.detach().mean((0, 1)).numpy(), rtol=1e-5)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")
def test_a_nested_tensor_is_summarised_by_its_components_without_padding() -> None:
    parts = [torch.randn(3, 4), torch.randn(5, 4)]
    nested = torch.nested.nested_tensor(parts)
    found = first_float_tensor((nested, None))
    assert found is not None
    assert not found.is_nested
    assert torch.equal(found, torch.cat(parts))  # (sum T_i, F): no padding rows
    assert first_float_tensor(nested, nested=True) is nested
    summary = Summarizer(bins=8).summarize(found, units=unit_dim(found.shape, "Linear"), sync=True)
    assert summary.stats[wire.STAT_INDEX["numel"]].item() == 32
    assert summary.units is not None
    assert summary.units.shape == (4,)
    ragged = torch.nested.nested_tensor([torch.randn(2, 3), torch.randn(2, 5)])
    flat = first_float_tensor(ragged)
    assert flat is not None
    assert flat.shape == (16,)


def test_a_packed_sequence_is_summarised_by_its_data() -> None:
    lengths = torch.tensor([5, 2, 3])
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        torch.randn(3, 5, 4), lengths, batch_first=True, enforce_sorted=False
    )
    output, _ = torch.nn.LSTM(4, 6, batch_first=True)(packed)
    found = first_float_tensor((output, None))
    assert found is output.data
    assert found.shape == (10, 6)
