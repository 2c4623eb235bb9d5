"""Rollups kept at ingest, and long series thinned from them, on SQLite and PostgreSQL."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from batches import make_batch, new_id, stats_block, store_batch, store_run
from sqlalchemy import select
from sqlalchemy.orm import Session

from layerwatch import wire
from layerwatch_server import store
from layerwatch_server.models import ROLLUP_FIELDS, SqlStatRollup, SqlTensor, rollup_column
from layerwatch_server.store import envelopes, measurements, rollups

NAN, INF = math.nan, math.inf
STEPS = 30_000  # above RAW_ROWS: thinned from the rollups
GAP = 3  # captured every 3 steps


def _values(n: int, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    values = np.sin(np.arange(n) / 700) + 0.05 * rng.standard_normal(n)
    return [float(v) for v in values]


def _store_series(
    session: Session, values: list[float], *, steps: list[int] | None = None, per_batch: int = 1000,
    shuffle: bool = False,
) -> tuple[str, list[int]]:  # fmt: skip
    run_id = store_run(session)
    steps = steps if steps is not None else [GAP * i for i in range(len(values))]
    chunks = [range(i, min(i + per_batch, len(steps))) for i in range(0, len(steps), per_batch)]
    if shuffle:
        random.Random(1).shuffle(chunks)
    for chunk in chunks:
        block = stats_block("fc1", [steps[i] for i in chunk], mean=[values[i] for i in chunk])
        store_batch(session, run_id, make_batch(stats=[block]))
    return run_id, steps


def _thin(session: Session, run_id: str, **query: object) -> wire.Batch:
    return store.get_series(
        session, run_id, tensor="fc1", kind="activation", stat="mean", limit=None, **query
    )


def _raw(steps: list[int], values: list[float], start: int, end: int) -> dict[int, float]:
    return {s: v for s, v in zip(steps, values, strict=True) if start <= s <= end}


@pytest.mark.parametrize(("start", "end"), [(None, None), (1000, 70_000), (0, 33_334)])
def test_a_long_series_is_thinned_from_rollups_keeping_its_envelope(
    session: Session, start: int | None, end: int | None
) -> None:
    values = _values(STEPS)
    values[4321], values[17_777] = 40.0, -40.0  # spikes
    values[20_000:20_900] = [NAN] * 900  # a gap wider than a bucket
    values[25_000] = INF
    run_id, steps = _store_series(session, values)
    lo = 0 if start is None else start
    hi = steps[-1] if end is None else end
    raw = _raw(steps, values, lo, hi)

    thin = _thin(session, run_id, start=start, end=end, max_points=400)
    assert thin.total == len(raw)
    assert thin.downsampled
    assert len(thin.steps) <= 400
    assert thin.steps == sorted(set(thin.steps))
    kept = dict(zip(thin.steps, thin.values, strict=True))
    for step, value in kept.items():  # every point is a stored row
        assert step in raw
        assert value == raw[step] or (math.isnan(value) and math.isnan(raw[step]))
    first, last = min(raw), max(raw)
    assert thin.steps[0] == first
    assert thin.steps[-1] == last
    numbers = {s: v for s, v in raw.items() if not math.isnan(v)}
    assert max(numbers.values()) in kept.values()
    assert min(numbers.values()) in kept.values()
    for step in (4321 * GAP, 17_777 * GAP, 25_000 * GAP):
        if lo <= step <= hi:
            assert step in kept
    if lo <= 20_400 * GAP <= hi:  # the NaN gap shows
        assert any(20_000 * GAP <= s < 20_900 * GAP and math.isnan(v) for s, v in kept.items())


def test_rollups_read_little_whatever_the_length(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The envelope reads rollups and at most a few buckets of rows: never the series."""
    run_id, steps = _store_series(session, _values(STEPS), per_batch=5000)
    read_rows: list[int] = []
    rows = envelopes._RollupReader.rows

    def counting(self: envelopes._RollupReader, start: int | None, end: int | None):  # type: ignore[no-untyped-def]
        units = rows(self, start, end)
        read_rows.append(0 if units is None else len(units.rows))
        return units

    monkeypatch.setattr(envelopes._RollupReader, "rows", counting)
    thin = _thin(session, run_id, start=500, end=80_000, max_points=1000)
    assert thin.total == len(_raw(steps, [0.0] * len(steps), 500, 80_000))
    assert sum(read_rows) <= 2 * rollups.ROWS_PER_BUCKET * rollups.FANOUT


def test_short_series_and_series_without_rollups_are_thinned_from_their_rows(
    session: Session,
) -> None:
    run_id, _steps = _store_series(session, _values(500))
    assert envelopes.read_envelope(
        session, _tensor_id(session, run_id), stat="mean", rank=0, start=None, end=None,
        max_points=100,
    ) is None  # fmt: skip
    thin = _thin(session, run_id, max_points=100)
    assert thin.downsampled
    assert thin.total == 500


def _tensor_id(session: Session, run_id: str) -> int:
    tensor_id = session.scalar(select(SqlTensor.id).where(SqlTensor.run_id == run_id))
    assert tensor_id is not None
    return tensor_id


def _rollup_table(session: Session, run_id: str) -> dict[tuple[int, int], tuple[object, ...]]:
    table = SqlStatRollup.__table__.c
    rows = session.execute(
        select(table).where(table.tensor_id == _tensor_id(session, run_id))
    ).all()
    return {(row.level, row.bucket): tuple(row)[1:] for row in rows}


def _expected_rollups(
    steps: list[int], values: list[float], width: int
) -> dict[tuple[int, int], dict[str, object]]:
    """The rollups of one statistic, computed from scratch in Python."""
    expected: dict[tuple[int, int], dict[str, object]] = {}
    for level in rollups.LEVELS:
        w = rollups.level_width(width, level)
        for step, value in sorted(zip(steps, values, strict=True)):
            entry = expected.setdefault((level, step // w), {"rows": 0, "numbers": [], "nans": []})
            entry["rows"] += 1  # type: ignore[operator]
            (entry["nans"] if math.isnan(value) else entry["numbers"]).append((value, step))  # type: ignore[union-attr]
    for entry in expected.values():
        numbers, nans = entry.pop("numbers"), entry.pop("nans")
        low = min(numbers, default=(None, None))  # type: ignore[type-var]
        high = max(numbers, key=lambda vs: (vs[0], -vs[1]), default=(None, None))  # type: ignore[arg-type]
        entry.update(lo=low[0], lo_step=low[1], hi=high[0], hi_step=high[1],
                     nan_step=min((s for _, s in nans), default=None))  # type: ignore[union-attr]  # fmt: skip
    return expected


@pytest.mark.parametrize("shuffle", [False, True], ids=["in-order", "shuffled"])
def test_rollups_match_a_computation_from_scratch_however_rows_arrive(
    session: Session, shuffle: bool
) -> None:
    values = _values(3000, seed=3)
    values[700:705] = [NAN] * 5
    values[1200] = -INF
    values[1900] = values[1901] = 9.0  # a tie: the earlier step is kept
    run_id, steps = _store_series(session, values, per_batch=97, shuffle=shuffle)
    width = session.scalar(select(SqlTensor.rollup_width).where(SqlTensor.run_id == run_id))
    assert width == rollups.ROWS_PER_BUCKET * 4  # a gap of 3, rounded up to 4
    stored = _rollup_table(session, run_id)
    expected = _expected_rollups(steps, values, width)
    assert set(stored) == set(expected)
    columns = [c.name for c in SqlStatRollup.__table__.columns][1:]
    for key, row in stored.items():
        got = dict(zip(columns, row, strict=True))
        want = expected[key]
        assert got["rows"] == want["rows"]
        for field in ROLLUP_FIELDS:
            assert got[rollup_column("mean", field)] == want[field], (key, field)


def test_a_width_is_fixed_from_single_step_batches_and_earlier_rows_rolled_up(
    session: Session,
) -> None:
    run_id = store_run(session)
    for step in (0, 50):
        store_batch(session, run_id, make_batch(stats=[stats_block("fc1", [step])]))
    width = session.scalar(select(SqlTensor.rollup_width).where(SqlTensor.run_id == run_id))
    assert width == rollups.ROWS_PER_BUCKET * 64  # every 50 steps: 64 x 64 steps a bucket
    stored = _rollup_table(session, run_id)
    assert {key: row[3] for key, row in stored.items()} == {(1, 0): 2, (2, 0): 2}  # rows


def test_a_replayed_batch_leaves_the_rollups_alone(session: Session) -> None:
    run_id = store_run(session)
    batch = make_batch(batch_id=new_id("b"), stats=[stats_block("fc1", range(0, 300))])
    store_batch(session, run_id, batch)
    before = _rollup_table(session, run_id)
    assert store_batch(session, run_id, batch).duplicate
    assert _rollup_table(session, run_id) == before


def test_widths_follow_the_spacing() -> None:
    assert rollups.width_for([5]) is None
    assert rollups.width_for([0, 1, 2]) == rollups.ROWS_PER_BUCKET
    assert rollups.width_for([0, 10, 20, 30]) == rollups.ROWS_PER_BUCKET * 16
    assert rollups.width_for([0, 1000]) == rollups.ROWS_PER_BUCKET * 1024


def test_a_long_tensor_is_sampled_at_its_bucket_bounds_and_its_first_nan_found(
    session: Session,
) -> None:
    values = _values(3000, seed=5)
    run_id, steps = _store_series(session, values, per_batch=500)
    nonfinite = [0] * 3000
    nonfinite[2222:] = [4] * (3000 - 2222)
    other = make_batch(stats=[stats_block("fc2", steps, nonfinite=nonfinite)])
    store_batch(session, run_id, other)
    ids = [i for _, i in measurements.list_tensor_ids(session, run_id, kind="activation")]

    sampled = measurements.thinned_steps(session, ids, max_steps=10)
    assert len(sampled) <= 10
    assert sampled[0] == steps[0]
    assert sampled[-1] == steps[-1]
    assert set(sampled) <= set(steps)
    assert measurements.first_nonfinite_step(session, ids) == steps[2222]
