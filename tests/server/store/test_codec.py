"""The codec of stored binary data: every packing round-trips, edge cases included."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from layerwatch_server.models import SqlHistogram
from layerwatch_server.store import codec

ODD = [0.0, -0.0, math.nan, math.inf, -math.inf, 1e-310, -1.5, 3.4e38]
counts_lists = st.lists(st.integers(0, 2**63 - 1), max_size=600)
float64s = st.floats(allow_nan=True, allow_infinity=True)


def same(actual: np.ndarray, expected: object) -> bool:
    """Equal, NaN included, signed zeros told apart."""
    expected = np.asarray(expected, dtype=actual.dtype)
    return actual.shape == expected.shape and actual.tobytes() == expected.tobytes()


def stored_histogram(counts: bytes, bins: int, **fields: object) -> SqlHistogram:
    return SqlHistogram(tensor_id=1, step=3, rank=0, bins=bins, counts=counts, **fields)


# -- histogram counts and edges ---------------------------------------------------------


def test_counts_that_fit_are_uint32() -> None:
    packed = codec.pack_counts([0, 1, 2**32 - 1])
    assert packed == struct.pack("<3I", 0, 1, 2**32 - 1)
    assert codec.unpack_counts(packed, 3).tolist() == [0, 1, 2**32 - 1]


def test_a_count_of_2_32_or_more_makes_every_count_uint64() -> None:
    counts = [5, 2**32, 2**63 - 1]
    packed = codec.pack_counts(counts)
    assert len(packed) == 8 * len(counts)
    unpacked = codec.unpack_counts(packed, len(counts))
    assert unpacked.dtype == np.int64
    assert unpacked.tolist() == counts


def test_counts_packed_by_the_client_are_stored_as_they_came() -> None:
    packed = struct.pack("<2I", 7, 9)
    assert codec.pack_counts(packed) is packed
    assert codec.unpack_counts(packed, 2).tolist() == [7, 9]


def test_no_counts() -> None:
    assert codec.pack_counts([]) == b""
    assert codec.unpack_counts(b"", 0).tolist() == []
    assert codec.unpack_counts(b"", 0).dtype == np.int64


@given(counts_lists)
def test_counts_round_trip(counts: list[int]) -> None:
    assert codec.unpack_counts(codec.pack_counts(counts), len(counts)).tolist() == counts


def test_edges_are_float64_bit_for_bit() -> None:
    edges = [-1e308, 0.1, 1 / 3, *ODD]
    packed = codec.pack_edges(edges)
    assert len(packed) == 8 * len(edges)
    assert same(codec.unpack_edges(packed), edges)
    assert codec.unpack_edges(codec.pack_edges([])).tolist() == []


@given(st.lists(float64s, max_size=513))
def test_edges_round_trip(edges: list[float]) -> None:
    assert same(codec.unpack_edges(codec.pack_edges(edges)), edges)


def packed_row(counts: list[int], *, lo: float | None = None, hi: float | None = None,
               **fields: object) -> SqlHistogram:  # fmt: skip
    """A histogram row as ingest stores it."""
    [blob], [kept_lo], [kept_hi] = codec.pack_histograms([counts], [lo], [hi])
    return stored_histogram(blob, len(counts), lo=kept_lo, hi=kept_hi, **fields)


def test_a_histogram_with_explicit_edges() -> None:
    row = packed_row([1, 2**40], edges=codec.pack_edges([-1, 0.5, 9]))
    histogram = codec.unpack_histogram(row)
    assert histogram.counts.tolist() == [1, 2**40]
    assert histogram.edges.tolist() == [-1.0, 0.5, 9.0]


def test_a_histogram_of_equal_bins_over_lo_hi() -> None:
    row = packed_row([3, 0, 1, 4], lo=-1.0, hi=1.0)
    assert (row.lo, row.hi) == (None, None)  # float32 bounds travel in the packed bytes
    histogram = codec.unpack_histogram(row)
    assert histogram.edges.tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert histogram.counts.tolist() == [3, 0, 1, 4]
    assert histogram.edges.dtype == np.float64


def test_bounds_float32_cannot_hold_stay_in_their_columns() -> None:
    row = packed_row([3, 0, 1], lo=0.1, hi=1 / 3)
    assert (row.lo, row.hi) == (0.1, 1 / 3)
    histogram = codec.unpack_histogram(row)
    assert (histogram.edges[0], histogram.edges[-1]) == (0.1, 1 / 3)


def test_a_histogram_without_a_range_has_nan_edges() -> None:
    histogram = codec.unpack_histogram(packed_row([1]))
    assert np.isnan(histogram.edges).all()
    assert histogram.edges.shape == (2,)


def test_a_smooth_sampled_histogram_packs_small() -> None:
    rng = np.random.default_rng(0)
    counts = np.histogram(rng.standard_normal(65_536), bins=64)[0].tolist()
    [blob], _, _ = codec.pack_histograms([counts], [-4.0], [4.0])
    assert len(blob) < 96  # uint32 counts alone take 256
    assert codec.unpack_histogram_counts([blob], [64])[0].tolist() == counts


bounds = st.none() | st.floats(allow_nan=True, allow_infinity=True)


@given(st.lists(st.tuples(st.lists(st.integers(0, 2**63 - 1), min_size=1, max_size=70) |
                          st.lists(st.integers(0, 9), min_size=1, max_size=70),
                          bounds, bounds), min_size=1, max_size=12))  # fmt: skip
def test_packed_histograms_round_trip(histograms: list[tuple[list[int], float | None,
                                                               float | None]]) -> None:  # fmt: skip
    counts = [h[0] for h in histograms]
    lo, hi = [h[1] for h in histograms], [h[2] for h in histograms]
    blobs, kept_lo, kept_hi = codec.pack_histograms(counts, lo, hi)
    decoded = codec.unpack_histogram_counts(blobs, [len(c) for c in counts])
    assert [d.tolist() for d in decoded] == counts
    for blob, a, b, want_lo, want_hi in zip(blobs, kept_lo, kept_hi, lo, hi, strict=True):
        got = codec.unpack_bounds(blob, a, b)
        want = (math.nan if want_lo is None else want_lo, math.nan if want_hi is None else want_hi)
        assert same(np.array(got), want)


def test_packed_uint32_counts_as_the_client_sends_them() -> None:
    counts = [0, 7, 2**32 - 1, 12, 0]
    packed = struct.pack("<5I", *counts)
    [blob], _, _ = codec.pack_histograms([packed], [-1.0], [1.0])
    assert codec.unpack_histogram_counts([blob], [5])[0].tolist() == counts


# -- float32, float16, int32, float64 ---------------------------------------------------


def test_unit_means_keep_nan_and_infinities() -> None:
    means = np.array(ODD, dtype="<f4")
    unpacked = codec.unpack_unit_means(codec.pack_float32(means))
    assert unpacked.dtype == np.float64
    assert same(unpacked, means.astype(np.float64))


def test_float32_arrays_keep_their_shape() -> None:
    coordinates = np.arange(12, dtype=np.float64).reshape(6, 2) / 7
    packed = codec.pack_float32(coordinates)
    assert len(packed) == 4 * 12
    assert same(codec.unpack_float32(packed, (-1, 2)), coordinates.astype(np.float32))
    assert codec.unpack_float32(codec.pack_float32(np.zeros((0, 2))), (-1, 2)).shape == (0, 2)


@given(st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), max_size=64))
def test_float32_round_trip(values: list[float]) -> None:
    assert same(codec.unpack_float32(codec.pack_float32(values)), np.array(values, "<f4"))


def test_float16_features_become_float32_of_their_shape() -> None:
    halves = np.array([[0.5, -2.0, math.nan], [math.inf, -math.inf, 65504.0]], dtype="<f2")
    unpacked = codec.unpack_float16(halves.tobytes(), [2, 3])
    assert unpacked.dtype == np.float32
    assert same(unpacked, halves.astype(np.float32))
    assert codec.unpack_float16(b"", [0, 4]).shape == (0, 4)


def test_int32_class_indices_become_int64() -> None:
    indices = np.array([0, -1, 2**31 - 1, -(2**31)], dtype="<i4")
    unpacked = codec.unpack_int32(indices.tobytes())
    assert unpacked.dtype == np.int64
    assert unpacked.tolist() == indices.tolist()
    assert codec.unpack_int32(b"").tolist() == []


@given(st.lists(float64s, max_size=64))
def test_float64_round_trip(values: list[float]) -> None:
    assert same(codec.unpack_float64(codec.pack_float64(values)), values)


# -- NULL for NaN -------------------------------------------------------------------------


@pytest.mark.parametrize("values", [[], [None], [1.0, None, math.inf, -0.0]])
def test_null_measurements_are_nan(values: list[float | None]) -> None:
    expected = [math.nan if value is None else value for value in values]
    assert same(codec.floats(values), expected)
    listed = codec.float_list(values)
    assert all(type(value) is float for value in listed)
    assert same(np.array(listed), expected)
