"""A long statistic series thinned from its rollups, never from all its rows.

The result has the shape of `layerwatch_server.downsample.envelope_indices`:
the first and last points of the range, and, for each of at most
``(max_points - 2) // 2`` buckets, its lowest and highest point (a bucket with
only NaN keeps one NaN, so gaps stay visible). The buckets are runs of whole
rollup buckets (see `store.rollups`) of about equal size, with the range's
partial rollup buckets at either end replaced by their rows; every point is a
stored row, with its exact step and value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import select
from sqlalchemy.orm import Session

from layerwatch import wire
from layerwatch_server.downsample import MIN_POINTS
from layerwatch_server.models import ROLLUP_FIELDS, SqlStat, SqlStatRollup, SqlTensor, rollup_column
from layerwatch_server.store.rollups import NO_STEP, Units, level_width

RAW_ROWS = 20_000
"""A range of at most this many rows is thinned from its rows: reading them is cheap."""


@dataclass(frozen=True)
class Envelope:
    steps: list[int]
    values: list[float]
    total: int  # rows in the range


def read_envelope(
    session: Session,
    tensor_id: int,
    *,
    stat: wire.StatName,
    rank: int,
    start: int | None,
    end: int | None,
    max_points: int,
) -> Envelope | None:
    """The envelope of ``stat`` over [start, end]; None when the range is better thinned
    from its rows (no rollups yet, or at most `RAW_ROWS` rows)."""
    if max_points < MIN_POINTS:
        raise ValueError(f"max_points must be at least {MIN_POINTS}")
    width = session.scalar(select(SqlTensor.rollup_width).where(SqlTensor.id == tensor_id))
    if width is None:
        return None
    read = _RollupReader(session, tensor_id, rank, stat, start, end)
    coarse = read.level(2, level_width(width, 2))
    if coarse is None or int(coarse.rows.sum()) <= RAW_ROWS:
        return None
    buckets = (max_points - 2) // 2
    found = coarse if len(coarse.rows) >= buckets else read.level(1, width)
    if found is None:
        return None
    # the range's rows before its first whole bucket and after its last
    left = read.rows(start, int(found.first_step[0]) - 1) if start is not None else None
    right = read.rows(int(found.last_step[-1]) + 1, end) if end is not None else None
    units = _concat([piece for piece in (left, found, right) if piece is not None])
    n = len(units.rows)
    groups = np.arange(n) * min(buckets, n) // n  # (n,), non-decreasing
    merged = units.merge(np.flatnonzero(np.r_[True, np.diff(groups) != 0]))
    points = dict([read.point(int(units.first_step[0])), read.point(int(units.last_step[-1]))])
    for value, step in ((merged.lo[:, 0], merged.lo_step[:, 0]),
                        (merged.hi[:, 0], merged.hi_step[:, 0])):  # fmt: skip
        real = step != NO_STEP
        points.update(zip(step[real].tolist(), value[real].tolist(), strict=True))
    # A group with no number at all keeps one NaN, so the gap shows
    gaps = (merged.lo_step[:, 0] == NO_STEP) & (merged.nan_step[:, 0] != NO_STEP)
    points.update((step, float("nan")) for step in merged.nan_step[gaps, 0].tolist())
    steps = sorted(points)
    return Envelope(steps, [points[step] for step in steps], int(units.rows.sum()))


class _RollupReader:
    """The queries of one envelope: rollups of a level, rows, single points."""

    def __init__(
        self, session: Session, tensor_id: int, rank: int, stat: str,
        start: int | None, end: int | None,
    ) -> None:  # fmt: skip
        self._session, self._tensor_id, self._rank = session, tensor_id, rank
        self._stat, self._start, self._end = stat, start, end
        self._value = getattr(SqlStat, stat)

    def level(self, level: int, width: int) -> Units | None:
        """The level's buckets wholly inside the range (None when there is none)."""
        table = SqlStatRollup.__table__.c
        columns = ["rows", "first_step", "last_step",
                   *(rollup_column(self._stat, field) for field in ROLLUP_FIELDS)]  # fmt: skip
        query = select(*(table[c] for c in columns)).where(
            table.tensor_id == self._tensor_id, table.rank == self._rank, table.level == level
        )
        if self._start is not None:  # the first bucket starting at or after `start`
            query = query.where(table.bucket >= -(-self._start // width))
        if self._end is not None:  # the last ending at or before `end`
            query = query.where(table.bucket <= (self._end + 1) // width - 1)
        rows = self._session.execute(query.order_by(table.bucket)).all()
        if not rows:
            return None
        values: list[tuple[Any, ...]] = list(zip(*rows, strict=True))

        def ints(i: int) -> npt.NDArray[np.int64]:
            return np.array([NO_STEP if v is None else v for v in values[i]], dtype=np.int64)

        def floats(i: int) -> npt.NDArray[np.float64]:
            return np.array([np.nan if v is None else v for v in values[i]], dtype=np.float64)

        return Units(
            floats(3)[:, None], ints(4)[:, None], floats(5)[:, None], ints(6)[:, None],
            ints(7)[:, None], ints(0), ints(1), ints(2),
        )  # fmt: skip

    def rows(self, start: int | None, end: int | None) -> Units | None:
        """Single rows of [start, end] as units (None when there is none)."""
        query = select(SqlStat.step, self._value).where(
            SqlStat.tensor_id == self._tensor_id, SqlStat.rank == self._rank
        )
        if start is not None:
            query = query.where(SqlStat.step >= start)
        if end is not None:
            query = query.where(SqlStat.step <= end)
        rows = self._session.execute(query.order_by(SqlStat.step)).all()
        if not rows:
            return None
        steps = np.array([row[0] for row in rows], dtype=np.int64)
        values = np.array([np.nan if row[1] is None else row[1] for row in rows])
        return Units.of_rows(steps, values[:, None])

    def point(self, step: int) -> tuple[int, float]:
        """The stored value at ``step``."""
        value = self._session.scalar(
            select(self._value).where(
                SqlStat.tensor_id == self._tensor_id, SqlStat.rank == self._rank,
                SqlStat.step == step,
            )
        )  # fmt: skip
        return step, float("nan") if value is None else float(value)


def _concat(parts: list[Units]) -> Units:
    return Units(*(np.concatenate([getattr(part, f.name) for part in parts])
                   for f in dataclasses.fields(Units)))  # fmt: skip
