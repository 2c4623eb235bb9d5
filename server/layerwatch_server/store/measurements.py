"""Measurements of many tensors or many steps at once, as NumPy arrays, for the views.

The JSON endpoints (``series.py``, ``layers.py``) page one tensor at a time;
a view draws a whole network over a thinned set of steps. These queries first
list the captured steps, thin them, and then read only the rows of the steps
kept, so a long run costs a view the same as a short one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import BigInteger, Select, any_, bindparam, func, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from layerwatch_server.models import (
    WEIGHT_CHANGE_METRICS,
    SqlHistogram,
    SqlStat,
    SqlStatRollup,
    SqlTensor,
    SqlUnitMean,
    SqlWeightChange,
    rollup_column,
)
from layerwatch_server.store import codec
from layerwatch_server.store.paging import check_step_range, fetch_tuples
from layerwatch_server.store.rollups import ROWS_PER_BUCKET
from layerwatch_server.store.runs import require_run

Floats = npt.NDArray[np.float64]
MeasurementTable = type[SqlStat] | type[SqlHistogram] | type[SqlUnitMean] | type[SqlWeightChange]
_CHUNK = 500  # bound parameters per IN list


@dataclass(frozen=True)
class StepHistogram:
    """One stored histogram: ``counts[i]`` elements in ``[edges[i], edges[i + 1]]``."""

    step: int
    edges: Floats  # (bins + 1,)
    counts: npt.NDArray[np.int64]  # (bins,)
    sample_size: int | None


def thin_evenly(steps: Sequence[int], max_steps: int) -> list[int]:
    """At most ``max_steps`` of ``steps``, evenly spaced by position, first and last kept."""
    n = len(steps)
    if n <= max_steps:
        return list(steps)
    keep = np.unique(np.round(np.linspace(0, n - 1, max(max_steps, 2))).astype(np.intp))
    return [steps[i] for i in keep]


def list_tensor_ids(
    session: Session, run_id: str, *, kind: str, table: MeasurementTable | None = None
) -> list[tuple[str, int]]:
    """(name, id) of the run's tensors of ``kind`` in network order.

    With ``table``, only the tensors that have at least one row there.
    """
    require_run(session, run_id)
    query = select(SqlTensor.name, SqlTensor.id).where(
        SqlTensor.run_id == run_id, SqlTensor.kind == kind
    )
    if table is not None:
        query = query.where(select(table.tensor_id).where(table.tensor_id == SqlTensor.id).exists())
    return [(name, tensor_id) for name, tensor_id in session.execute(query.order_by(SqlTensor.id))]


def list_tensor_rows(session: Session, run_id: str) -> list[tuple[str, str, int, str | None]]:
    """(name, kind, id, module type) of every tensor of the run, in network order."""
    require_run(session, run_id)
    query = (
        select(SqlTensor.name, SqlTensor.kind, SqlTensor.id, SqlTensor.module_type)
        .where(SqlTensor.run_id == run_id)
        .order_by(SqlTensor.id)
    )
    return [(name, kind, i, module_type) for name, kind, i, module_type in session.execute(query)]


def first_nonfinite_step(
    session: Session, tensor_ids: Sequence[int], *, rank: int = 0
) -> int | None:
    """The first step at which any of ``tensor_ids`` has a NaN or infinite element.

    Tensors with rollups are looked up there first (the first bucket whose count of
    non-finite elements is positive), then in that bucket's rows only.
    """
    widths = _rollup_widths(session, tensor_ids)
    plain = [i for i in tensor_ids if i not in widths]
    first: list[int] = []
    for ids in _chunks(plain):
        step = session.scalar(
            select(func.min(SqlStat.step)).where(
                SqlStat.tensor_id.in_(ids), SqlStat.rank == rank, SqlStat.nonfinite > 0
            )
        )
        if step is not None:
            first.append(step)
    rollup = SqlStatRollup.__table__.c
    for ids in _chunks(list(widths)):
        flagged = session.execute(
            select(rollup.tensor_id, func.min(rollup.bucket))
            .where(rollup.tensor_id.in_(ids), rollup.rank == rank, rollup.level == 1,
                   rollup[rollup_column("nonfinite", "hi")] > 0)
            .group_by(rollup.tensor_id)
        ).all()  # fmt: skip
        for tensor_id, bucket in flagged:
            width = widths[tensor_id]
            step = session.scalar(
                select(func.min(SqlStat.step)).where(
                    SqlStat.tensor_id == tensor_id, SqlStat.rank == rank, SqlStat.nonfinite > 0,
                    SqlStat.step >= bucket * width, SqlStat.step < (bucket + 1) * width,
                )
            )  # fmt: skip
            if step is not None:
                first.append(step)
    return min(first, default=None)


def thinned_steps(
    session: Session, tensor_ids: Sequence[int], *, max_steps: int, rank: int = 0
) -> list[int]:
    """About ``max_steps`` of the steps at which any of ``tensor_ids`` has statistics,
    evenly spread, the first and last kept: every step of a short tensor, and of a
    long one the bounds of its rollup buckets (so no long series is read whole)."""
    widths = _rollup_widths(session, tensor_ids)
    rollup = SqlStatRollup.__table__.c
    counted = (
        select(rollup.tensor_id, func.sum(rollup.rows))
        .where(rollup.tensor_id.in_(list(widths)), rollup.rank == rank, rollup.level == 2)
        .group_by(rollup.tensor_id)
    )
    rows = {tensor_id: count for tensor_id, count in session.execute(counted)} if widths else {}
    # long enough that the bounds of its level-1 buckets are max_steps steps or more
    long = [i for i in widths if rows.get(i, 0) >= ROWS_PER_BUCKET * max_steps // 2]
    long_ids = set(long)
    short = [i for i in tensor_ids if i not in long_ids]
    steps = set(list_steps(session, SqlStat, short, rank=rank)) if short else set()
    for ids in _chunks(long):
        bounds = session.execute(
            select(rollup.first_step, rollup.last_step).where(
                rollup.tensor_id.in_(ids), rollup.rank == rank, rollup.level == 1
            )
        )
        for first, last in bounds:
            steps.update((first, last))
    return thin_evenly(sorted(steps), max_steps)


def _rollup_widths(session: Session, tensor_ids: Sequence[int]) -> dict[int, int]:
    widths: dict[int, int] = {}
    for ids in _chunks(tensor_ids):
        query = select(SqlTensor.id, SqlTensor.rollup_width).where(
            SqlTensor.id.in_(ids), SqlTensor.rollup_width.is_not(None)
        )
        widths.update({i: width for i, width in session.execute(query) if width is not None})
    return widths


def _chunks(values: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for i in range(0, len(values), _CHUNK):
        yield values[i : i + _CHUNK]


def list_steps(
    session: Session,
    table: MeasurementTable,
    tensor_ids: Sequence[int],
    *,
    rank: int = 0,
    start: int | None = None,
    end: int | None = None,
) -> list[int]:
    """The steps at which any of ``tensor_ids`` has a row in ``table``, ascending."""
    check_step_range(start, end)
    steps: set[int] = set()
    for ids in _chunks(tensor_ids):
        query = select(table.step).where(table.tensor_id.in_(ids), table.rank == rank).distinct()
        if start is not None:
            query = query.where(table.step >= start)
        if end is not None:
            query = query.where(table.step <= end)
        steps.update(session.scalars(query))
    return sorted(steps)


def first_steps(
    session: Session, table: MeasurementTable, tensor_ids: Sequence[int], *, rank: int = 0
) -> dict[int, int]:
    """Each tensor's first step with a row in ``table``."""
    first: dict[int, int] = {}
    for ids in _chunks(tensor_ids):
        query = (
            select(table.tensor_id, func.min(table.step))
            .where(table.tensor_id.in_(ids), table.rank == rank)
            .group_by(table.tensor_id)
        )
        first.update({tensor_id: step for tensor_id, step in session.execute(query)})
    return first


def _step_histograms(rows: Sequence[SqlHistogram]) -> list[StepHistogram]:
    return [
        StepHistogram(row.step, histogram.edges, histogram.counts, row.sample_size)
        for row, histogram in zip(rows, codec.unpack_histograms(rows), strict=True)
    ]


def get_histograms_at(
    session: Session, tensor_id: int, *, steps: Sequence[int], rank: int = 0
) -> list[StepHistogram]:
    """The histograms of one tensor at ``steps`` (those that exist), by step."""
    found: list[StepHistogram] = []
    for chunk in _chunks(sorted(set(steps))):
        query = select(SqlHistogram).where(
            SqlHistogram.tensor_id == tensor_id,
            SqlHistogram.rank == rank,
            SqlHistogram.step.in_(chunk),
        )
        found.extend(_step_histograms(list(session.scalars(query))))
    return sorted(found, key=lambda h: h.step)


def _table_of(
    session: Session,
    table: type[SqlStat] | type[SqlWeightChange],
    columns: Sequence[str],
    tensor_ids: Sequence[int],
    steps: Sequence[int],
    rank: int,
) -> dict[str, Floats]:
    """``{column: (tensors, steps) array}``, NaN where a tensor has no row at a step.

    The extra key ``present`` is 1 where a row exists and NaN where none does, so
    that a stored NaN can be told from a step the tensor was not captured at.
    """
    row_of = {tensor_id: i for i, tensor_id in enumerate(tensor_ids)}
    col_of = {step: j for j, step in enumerate(steps)}
    out = {c: np.full((len(tensor_ids), len(steps)), np.nan) for c in (*columns, "present")}
    selected = [table.tensor_id, table.step, *(getattr(table, c) for c in columns)]
    for query in _at_steps(session, select(*selected), table, tensor_ids, steps, rank):
        rows = fetch_tuples(session, query)
        if not rows:
            continue
        at = (
            np.array([row_of[row[0]] for row in rows]),
            np.array([col_of[row[1]] for row in rows]),
        )
        out["present"][at] = 1.0
        # (rows, columns); None is SQLite's NaN
        values = np.array([row[2:] for row in rows], dtype=np.float64)
        for i, column in enumerate(columns):
            out[column][at] = values[:, i]
    return out


def _at_steps(
    session: Session,
    query: Select,  # type: ignore[type-arg]
    table: MeasurementTable,
    tensor_ids: Sequence[int],
    steps: Sequence[int],
    rank: int,
) -> Iterator[Select]:  # type: ignore[type-arg]
    """``query`` restricted to ``tensor_ids`` at ``steps``, as the queries to run.

    PostgreSQL gets one query per tensor with the steps as one array (``= ANY``): its
    planner then walks the primary key per step; given every tensor at once it may scan
    all their rows instead. SQLite gets IN lists of a bounded number of parameters.
    """
    if session.get_bind().dialect.name == "postgresql":
        wanted = bindparam("steps", list(steps), type_=ARRAY(BigInteger))
        for tensor_id in tensor_ids:
            yield query.where(
                table.tensor_id == tensor_id, table.rank == rank, table.step == any_(wanted)
            )
        return
    for ids in _chunks(tensor_ids):
        for chunk in _chunks(steps):
            yield query.where(table.tensor_id.in_(ids), table.rank == rank, table.step.in_(chunk))


def get_stat_table(
    session: Session,
    tensor_ids: Sequence[int],
    *,
    stats: Sequence[str],
    steps: Sequence[int],
    rank: int = 0,
) -> dict[str, Floats]:
    """Statistics of many tensors at many steps: ``{stat: (tensors, steps) array}``."""
    return _table_of(session, SqlStat, stats, tensor_ids, steps, rank)


def get_weight_change_table(
    session: Session, tensor_ids: Sequence[int], *, steps: Sequence[int], rank: int = 0
) -> dict[str, Floats]:
    """Weight changes of many tensors: ``{metric: (tensors, steps) array}``."""
    return _table_of(session, SqlWeightChange, WEIGHT_CHANGE_METRICS, tensor_ids, steps, rank)


def get_unit_means_at(
    session: Session, tensor_id: int, *, steps: Sequence[int], rank: int = 0
) -> tuple[Floats, npt.NDArray[np.bool_]]:
    """Unit means of one tensor at ``steps``: (steps, units) and whether each step was captured.

    A step without a row is a row of NaN, marked False in the second array.
    """
    rows: dict[int, Floats] = {}
    for chunk in _chunks(steps):
        query = select(SqlUnitMean.step, SqlUnitMean.means).where(
            SqlUnitMean.tensor_id == tensor_id,
            SqlUnitMean.rank == rank,
            SqlUnitMean.step.in_(chunk),
        )
        for step, means in session.execute(query):
            rows[step] = codec.unpack_unit_means(means)
    units = max((len(r) for r in rows.values()), default=0)
    out = np.full((len(steps), units), np.nan)
    for j, step in enumerate(steps):
        if step in rows:
            out[j, : len(rows[step])] = rows[step]
    return out, np.array([step in rows for step in steps], dtype=bool)
