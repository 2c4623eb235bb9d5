"""envelope_indices against its contract and against a brute-force reference."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from layerwatch_server.downsample import MIN_POINTS, envelope_indices


def brute_envelope(values: list[float], max_points: int) -> list[int]:
    """The documented rule, one point at a time.

    First and last are kept; the n - 2 points between are cut into
    k = (max_points - 2) // 2 runs of consecutive points whose lengths differ
    by at most one (run b starts at ceil(b * (n - 2) / k)); each run keeps its
    smallest and largest non-NaN value, the earliest point on ties, or its
    first point when it holds only NaN.
    """
    n = len(values)
    if n <= max_points:
        return list(range(n))
    k = (max_points - 2) // 2
    bounds = [1 + math.ceil(b * (n - 2) / k) for b in range(k + 1)]
    keep = {0, n - 1}
    for lo, hi in itertools.pairwise(bounds):
        members = list(range(lo, hi))
        numbers = [i for i in members if not math.isnan(values[i])]
        if not numbers:
            keep.add(members[0])
            continue
        keep.add(min(numbers, key=lambda i: (values[i], i)))
        keep.add(max(numbers, key=lambda i: (values[i], -i)))
    return sorted(keep)


def envelope(values: list[float], max_points: int) -> list[int]:
    return envelope_indices(np.asarray(values, dtype=np.float64), max_points).tolist()


def test_short_series_are_kept_whole() -> None:
    assert envelope([3.0, 1.0, 2.0], 4) == [0, 1, 2]
    assert envelope([], 10) == []
    assert envelope([1.0] * 10, 10) == list(range(10))


def test_too_few_points_are_refused() -> None:
    with pytest.raises(ValueError, match="at least"):
        envelope([1.0] * 10, MIN_POINTS - 1)


def test_first_last_and_global_extremes_are_kept() -> None:
    values = [math.sin(i / 10) for i in range(1000)]
    values[123], values[777] = 50.0, -50.0

    kept = envelope(values, 20)

    assert kept[0] == 0
    assert kept[-1] == 999
    assert {123, 777} <= set(kept)
    assert len(kept) <= 20
    assert kept == sorted(set(kept))


def test_every_bucket_keeps_its_extremes() -> None:
    # Four buckets of 25 inner points (1..25, 26..50, ...), a distinct spike in each.
    values = [0.0] * 102
    spikes = {5: 3.0, 20: -3.0, 30: 9.0, 49: -9.0, 60: 1.0, 70: -1.0, 90: 7.0, 91: -7.0}
    for i, v in spikes.items():
        values[i] = v

    assert envelope(values, 10) == [0, *sorted(spikes), 101]


def test_a_bucket_of_only_nan_keeps_one_nan() -> None:
    values = [1.0] * 102
    values[26:51] = [math.nan] * 25  # exactly the second of four buckets

    kept = envelope(values, 10)

    nan_kept = [i for i in kept if math.isnan(values[i])]
    assert nan_kept == [26]


def test_nan_does_not_hide_a_bucket_extreme() -> None:
    values = [math.nan] * 12
    values[3], values[4] = -2.0, 5.0

    kept = envelope(values, 4)  # one bucket holding points 1..10

    assert kept == [0, 3, 4, 11]


def test_infinities_count_as_extremes() -> None:
    values = [0.0] * 50
    values[10], values[40] = math.inf, -math.inf

    kept = envelope(values, 4)

    assert {10, 40} <= set(kept)


def test_matches_brute_force_on_long_random_series() -> None:
    rng = np.random.default_rng(0)
    for n, max_points in [(1000, 4), (1000, 5), (1001, 100), (5000, 333), (37, 36)]:
        values = rng.standard_normal(n)
        values[rng.integers(0, n, n // 10)] = np.nan
        values = np.round(values, 1).tolist()  # plenty of ties
        assert envelope(values, max_points) == brute_envelope(values, max_points)


finite_or_not = st.floats(allow_nan=True, allow_infinity=True, width=32)


@given(values=st.lists(finite_or_not | st.sampled_from([0.0, 1.0]), max_size=300),
       max_points=st.integers(MIN_POINTS, 64))  # fmt: skip
def test_envelope_properties(values: list[float], max_points: int) -> None:
    kept = envelope(values, max_points)

    assert kept == brute_envelope(values, max_points)
    assert len(kept) <= max(max_points, 0)
    assert kept == sorted(set(kept))
    if not values:
        return
    assert kept[0] == 0
    assert kept[-1] == len(values) - 1
    numbers = [v for v in values if not math.isnan(v)]
    if numbers:
        shown = [values[i] for i in kept]
        assert min(numbers) in shown
        assert max(numbers) in shown
    if len(values) <= max_points:
        assert kept == list(range(len(values)))
