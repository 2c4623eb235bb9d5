"""Statistics rolled up per bucket of steps: what long series are thinned from.

A series thinned for display keeps, per bucket of steps, its smallest and
largest value (the envelope, see `layerwatch_server.downsample`). Reading a
million rows to find those costs a second; so ingest keeps, for every tensor,
rank and bucket, each statistic's minimum and maximum with their steps
(`models.SqlStatRollup`), at two levels: about `ROWS_PER_BUCKET` rows per level-1
bucket, `FANOUT` level-1 buckets per level-2 bucket. A thinned read then merges
at most a few thousand rollup rows, whatever the run's length.

A tensor's bucket width is in steps, fixed once from the spacing of its first
steps (captured every 50 steps: 64 x 64 steps per level-1 bucket), so buckets
hold about the same number of rows whatever the capture interval. Until two of
its steps are known a tensor has no width and no rollups; its series are read
row by row, which is cheap while they are short. When the width is fixed, the
rows stored until then are rolled up in the same transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Table, select, update
from sqlalchemy.orm import Session

from layerwatch import wire
from layerwatch_server.models import ROLLUP_FIELDS, SqlStat, SqlStatRollup, SqlTensor, rollup_column

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]

ROWS_PER_BUCKET = 64
"""Rows a level-1 bucket holds when a tensor is captured at a steady interval."""
FANOUT = 16
"""Level-1 buckets per level-2 bucket."""
LEVELS = (1, 2)
NO_STEP = np.iinfo(np.int64).max
"""Stands for a missing step in integer arrays (NULL in the table)."""
_ROLLUPS: Table = SqlStatRollup.__table__  # type: ignore[assignment]
_KEY = ("tensor_id", "rank", "level", "bucket")


def level_width(width: int, level: int) -> int:
    """Steps per bucket at ``level`` for a tensor whose level-1 width is ``width``."""
    return int(width * FANOUT ** (level - 1))


def width_for(steps: Sequence[int]) -> int | None:
    """The level-1 width for a tensor first seen at ``steps`` (any order): `ROWS_PER_BUCKET`
    times their usual spacing, rounded up to a power of two; None from fewer than two."""
    if len(steps) < 2:
        return None
    gaps = np.diff(np.unique(np.asarray(steps, dtype=np.int64)))
    if not gaps.size:
        return None
    gap = int(np.median(gaps))
    return int(ROWS_PER_BUCKET * (1 << max(gap - 1, 0).bit_length()))


# -- merging envelopes -----------------------------------------------------------------


@dataclass(frozen=True)
class Units:
    """Consecutive pieces of a series (single rows or whole buckets) and their envelope,
    one row per piece, one column per statistic (or a single column): NaN in ``lo`` and
    ``hi`` where a piece has no number, `NO_STEP` where a step is missing."""

    lo: Floats  # (n, stats)
    lo_step: Ints  # (n, stats)
    hi: Floats
    hi_step: Ints
    nan_step: Ints  # (n, stats): the piece's first step with NaN
    rows: Ints  # (n,)
    first_step: Ints  # (n,)
    last_step: Ints  # (n,)

    @classmethod
    def of_rows(cls, steps: Ints, values: Floats) -> Units:
        """Single rows: ``steps`` (n,) and ``values`` (n, stats)."""
        nan = np.isnan(values)
        at = np.broadcast_to(steps[:, None], values.shape)
        real = np.where(nan, NO_STEP, at)
        return cls(values, real, values, real, np.where(nan, at, NO_STEP),
                   np.ones(len(steps), dtype=np.int64), steps, steps)  # fmt: skip

    def merge(self, starts: Ints) -> Units:
        """Merge the runs of pieces that begin at ``starts`` (sorted, the first 0)."""
        lo, lo_step = _extreme(self.lo, self.lo_step, starts, np.minimum)
        hi, hi_step = _extreme(self.hi, self.hi_step, starts, np.maximum)
        return Units(
            lo, lo_step, hi, hi_step,
            np.minimum.reduceat(self.nan_step, starts, axis=0),
            np.add.reduceat(self.rows, starts),
            np.minimum.reduceat(self.first_step, starts),
            np.maximum.reduceat(self.last_step, starts),
        )  # fmt: skip


def _extreme(values: Floats, steps: Ints, starts: Ints, pick: np.ufunc) -> tuple[Floats, Ints]:
    """Per run: the smallest (``np.minimum``) or largest value that is not NaN, and the
    earliest step it is at; NaN and `NO_STEP` for a run of only NaN."""
    nan = np.isnan(values)
    worst = np.inf if pick is np.minimum else -np.inf
    key = np.where(nan, worst, values)
    best = pick.reduceat(key, starts, axis=0)  # (runs, stats)
    lengths = np.diff(np.r_[starts, len(values)])
    hit = (key == np.repeat(best, lengths, axis=0)) & ~nan
    step = np.minimum.reduceat(np.where(hit, steps, NO_STEP), starts, axis=0)
    return np.where(step == NO_STEP, np.nan, best), step  # NaN: no number in the run


def run_starts(*keys: Ints) -> Ints:
    """Where a run of equal keys begins, in arrays sorted by them."""
    change = np.zeros(len(keys[0]), dtype=bool)
    change[:1] = True
    for key in keys:
        change[1:] |= key[1:] != key[:-1]
    return np.flatnonzero(change)


# -- at ingest ---------------------------------------------------------------------------


def roll_up(session: Session, batch: wire.Batch, tensor_ids: dict[tuple[str, str], int]) -> None:
    """Fold the batch's statistics, just stored, into the rollups, fixing the width of
    tensors that have none yet. (A row the batch repeats counts twice in ``rows``.)"""
    blocks = batch.stats
    if not blocks:
        return
    ids = [tensor_ids[(block.name, block.kind)] for block in blocks]
    widths = _widths(session, set(ids))
    blocks = [block for block, i in zip(blocks, ids, strict=True) if i in widths]
    if not blocks:
        return
    lengths = [len(block.steps) for block in blocks]
    n = sum(lengths)
    ids = [tensor_ids[(block.name, block.kind)] for block in blocks]
    tensors = np.repeat(np.array(ids, dtype=np.int64), lengths)
    width = np.repeat(np.array([widths[i] for i in ids], dtype=np.int64), lengths)
    steps = np.fromiter(chain.from_iterable(b.steps for b in blocks), np.int64, count=n)
    values = np.empty((n, len(wire.STAT_NAMES)))  # (rows, stats)
    for column, stat in enumerate(wire.STAT_NAMES):
        values[:, column] = np.fromiter(
            chain.from_iterable(getattr(b, stat) for b in blocks), np.float64, count=n
        )
    ranks = np.full(n, batch.rank, dtype=np.int64)
    _store(session, tensors, ranks, steps, values, width)


def _store(
    session: Session, tensors: Ints, ranks: Ints, steps: Ints, values: Floats, width: Ints
) -> None:
    """Roll up rows of known width at every level and merge them into the table."""
    if not _sorted(tensors, ranks, steps):  # blocks usually come sorted
        order = np.lexsort((steps, ranks, tensors))
        tensors, ranks, steps = tensors[order], ranks[order], steps[order]
        values, width = values[order], width[order]
    units = Units.of_rows(steps, values)
    records: list[tuple[Any, ...]] = []
    for level in LEVELS:
        bucket = steps // (width * FANOUT ** (level - 1))
        starts = run_starts(tensors, ranks, bucket)
        units = units.merge(starts)
        tensors, ranks, bucket, width = (
            tensors[starts],
            ranks[starts],
            bucket[starts],
            width[starts],
        )
        steps = units.first_step
        records += _records(tensors, ranks, level, bucket, units)
    _upsert(session, records)


def _sorted(tensors: Ints, ranks: Ints, steps: Ints) -> bool:
    """Whether the rows are in (tensor, rank, step) order."""
    same_tensor = tensors[1:] == tensors[:-1]
    same_rank = same_tensor & (ranks[1:] == ranks[:-1])
    return bool(
        (tensors[1:] >= tensors[:-1]).all()
        and (~same_tensor | (ranks[1:] >= ranks[:-1])).all()
        and (~same_rank | (steps[1:] >= steps[:-1])).all()
    )


def _records(
    tensors: Ints, ranks: Ints, level: int, bucket: Ints, units: Units
) -> list[tuple[Any, ...]]:
    """Rows for `_upsert`, in `_COLUMNS` order; NaN and `NO_STEP` as NULL."""
    per_stat = []
    for field in ROLLUP_FIELDS:
        column: npt.NDArray[Any] = getattr(units, field)
        missing = np.isnan(column) if column.dtype.kind == "f" else column == NO_STEP
        per_stat.append(np.where(missing, np.array(None), column.astype(object)))
    # (n, stats, fields) -> (n, stats * fields), statistic by statistic
    measured = np.stack(per_stat, axis=2).reshape(len(bucket), -1).tolist()
    keys = zip(tensors.tolist(), ranks.tolist(), [level] * len(bucket), bucket.tolist(),
               units.rows.tolist(), units.first_step.tolist(), units.last_step.tolist(),
               strict=True)  # fmt: skip
    return [(*key, *rest) for key, rest in zip(keys, measured, strict=True)]


def _widths(session: Session, tensor_ids: set[int]) -> dict[int, int]:
    """Each tensor's width. A tensor without one gets it once two of its steps are
    stored, and all its rows so far are rolled up then: they are left out of the
    answer, which names only the tensors whose new rows are still to roll up."""
    query = select(SqlTensor.id, SqlTensor.rollup_width)
    known: dict[int, int | None] = {
        i: w for i, w in session.execute(query.where(SqlTensor.id.in_(tensor_ids)))
    }
    unset = sorted(i for i in tensor_ids if known.get(i) is None)
    if not unset:
        return {i: w for i, w in known.items() if w is not None}
    # Lock their rows (PostgreSQL): a concurrent batch fixing a width waits for this one
    # to commit, so that every row is rolled up once, by one of them.
    locked = session.execute(query.where(SqlTensor.id.in_(unset)).with_for_update())
    known.update({i: w for i, w in locked})
    answer = {i: w for i, w in known.items() if w is not None}
    for tensor_id in unset:
        if known.get(tensor_id) is not None:
            continue
        stored = _stored_rows(session, tensor_id)  # this batch's rows included
        width = width_for(stored[1].tolist())
        if width is None:
            continue
        session.execute(
            update(SqlTensor).where(SqlTensor.id == tensor_id).values(rollup_width=width)
        )
        tensors, steps, ranks, values = stored
        _store(session, tensors, ranks, steps, values, np.full(len(steps), width))
    return answer


def _stored_rows(session: Session, tensor_id: int) -> tuple[Ints, Ints, Ints, Floats]:
    """All of a tensor's stat rows: tensor ids, steps, ranks and (rows, stats) values."""
    stats = [getattr(SqlStat, stat) for stat in wire.STAT_NAMES]
    query = select(SqlStat.tensor_id, SqlStat.step, SqlStat.rank, *stats).where(
        SqlStat.tensor_id == tensor_id
    )
    rows = session.execute(query).all()
    columns = list(zip(*rows, strict=True)) if rows else [()] * (3 + len(stats))
    return (
        np.array(columns[0], dtype=np.int64),
        np.array(columns[1], dtype=np.int64),
        np.array(columns[2], dtype=np.int64),
        np.array(columns[3:], dtype=np.float64).T.reshape(len(rows), len(stats)),
    )


_COLUMNS = (
    "tensor_id", "rank", "level", "bucket", "rows", "first_step", "last_step",
    *(rollup_column(stat, field) for stat in wire.STAT_NAMES for field in ROLLUP_FIELDS),
)  # fmt: skip


def _upsert_statement(session: Session) -> str:
    """INSERT merging each record into the stored bucket it meets (the same SQL runs on
    SQLite and PostgreSQL)."""
    dialect = session.get_bind().dialect
    quote = dialect.identifier_preparer.quote
    mark = {"qmark": "?", "format": "%s", "pyformat": "%s"}[dialect.paramstyle]
    table = quote(_ROLLUPS.name)

    def old(column: str) -> str:
        return f"{table}.{quote(column)}"

    def new(column: str) -> str:
        return f"excluded.{quote(column)}"

    merged = [
        f"rows = {old('rows')} + {new('rows')}",
        f"first_step = CASE WHEN {new('first_step')} < {old('first_step')} "
        f"THEN {new('first_step')} ELSE {old('first_step')} END",
        f"last_step = CASE WHEN {new('last_step')} > {old('last_step')} "
        f"THEN {new('last_step')} ELSE {old('last_step')} END",
    ]
    for stat in wire.STAT_NAMES:
        for side, better in (("lo", "<"), ("hi", ">")):
            value, step = rollup_column(stat, side), rollup_column(stat, f"{side}_step")
            wins = (
                f"{new(value)} IS NOT NULL AND ({old(value)} IS NULL "
                f"OR {new(value)} {better} {old(value)} "
                f"OR ({new(value)} = {old(value)} AND {new(step)} < {old(step)}))"
            )
            merged += [
                f"{quote(value)} = CASE WHEN {wins} THEN {new(value)} ELSE {old(value)} END",
                f"{quote(step)} = CASE WHEN {wins} THEN {new(step)} ELSE {old(step)} END",
            ]
        nan = rollup_column(stat, "nan_step")
        merged.append(
            f"{quote(nan)} = CASE WHEN {old(nan)} IS NULL OR {new(nan)} < {old(nan)} "
            f"THEN {new(nan)} ELSE {old(nan)} END"
        )
    columns = ", ".join(map(quote, _COLUMNS))
    marks = ", ".join([mark] * len(_COLUMNS))
    key = ", ".join(map(quote, _KEY))
    return (
        f"INSERT INTO {table} ({columns}) VALUES ({marks}) "
        f"ON CONFLICT ({key}) DO UPDATE SET {', '.join(merged)}"
    )


def _upsert(session: Session, records: list[tuple[Any, ...]]) -> None:
    if records:
        session.connection().exec_driver_sql(_upsert_statement(session), records)
