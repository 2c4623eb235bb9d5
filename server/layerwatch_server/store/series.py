"""Measurements over steps: statistic series, histograms and scalars."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from layerwatch import wire
from layerwatch_server.downsample import envelope_indices
from layerwatch_server.errors import RunNotFound, ScalarNotFound, TensorNotFound
from layerwatch_server.models import SqlHistogram, SqlRun, SqlScalar, SqlStat, SqlTensor
from layerwatch_server.schemas import (
    HistogramPublic,
    HistogramsPublic,
    ScalarNamesPublic,
    ScalarSeriesPublic,
    SeriesPublic,
)


def find_tensor_id(session: Session, run_id: str, name: str, kind: str) -> int:
    tensor_id = session.scalar(
        select(SqlTensor.id).where(
            SqlTensor.run_id == run_id, SqlTensor.name == name, SqlTensor.kind == kind
        )
    )
    if tensor_id is not None:
        return tensor_id
    if session.get(SqlRun, run_id) is None:
        raise RunNotFound(f"run `{run_id}` does not exist")
    raise TensorNotFound(f"run `{run_id}` has no {kind} tensor `{name}`")


_Query = TypeVar("_Query", bound=Select)  # type: ignore[type-arg]
_Row = TypeVar("_Row")


def page_by_step(
    query: _Query,
    step_column: Any,
    *,
    start: int | None,
    end: int | None,
    after_step: int | None,
    limit: int | None,
) -> _Query:
    if start is not None:
        query = query.where(step_column >= start)
    if end is not None:
        query = query.where(step_column <= end)
    if after_step is not None:
        query = query.where(step_column > after_step)
    query = query.order_by(step_column)
    return query if limit is None else query.limit(limit + 1)


def _shape_series(
    rows: list[tuple[Any, ...]], *, limit: int | None, max_points: int | None
) -> tuple[list[tuple[Any, ...]], int, bool, int | None]:
    """Cut a fetched page or thin a whole range; returns (rows, total, downsampled, next)."""
    if max_points is not None:
        total = len(rows)
        values = np.array([row[1] for row in rows], dtype=np.float64)
        keep = envelope_indices(values, max_points)
        return [rows[i] for i in keep], total, len(keep) < total, None
    next_after = None
    if limit is not None and len(rows) > limit:
        rows = rows[:limit]
        next_after = rows[-1][0]
    return rows, len(rows), False, next_after


def cut_page(
    rows: list[_Row], limit: int, step_of: Callable[[_Row], int]
) -> tuple[list[_Row], int | None]:
    """A page fetched with one row too many: the page, and the step to read on after."""
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, step_of(rows[-1])


def as_floats(values: list[Any]) -> list[float]:
    floats: list[float] = np.array(values, dtype=np.float64).tolist()  # None (SQLite's NaN) -> nan
    return floats


def get_series(
    session: Session,
    run_id: str,
    *,
    tensor: str,
    kind: wire.Kind,
    stat: wire.StatName,
    rank: int = 0,
    start: int | None = None,
    end: int | None = None,
    after_step: int | None = None,
    limit: int | None = 10_000,
    max_points: int | None = None,
) -> SeriesPublic:
    """One statistic over steps: a page at full resolution, or the range downsampled."""
    tensor_id = find_tensor_id(session, run_id, tensor, kind)
    column = getattr(SqlStat, stat)
    query = select(SqlStat.step, column).where(SqlStat.tensor_id == tensor_id, SqlStat.rank == rank)
    query = page_by_step(
        query,
        SqlStat.step,
        start=start,
        end=end,
        after_step=after_step,
        limit=None if max_points is not None else limit,
    )
    rows = [tuple(r) for r in session.execute(query)]
    rows, total, downsampled, next_after = _shape_series(rows, limit=limit, max_points=max_points)
    return SeriesPublic(
        tensor=tensor,
        kind=kind,
        stat=stat,
        rank=rank,
        steps=[r[0] for r in rows],
        values=as_floats([r[1] for r in rows]),
        total=total,
        downsampled=downsampled,
        next_after_step=next_after,
    )


def list_scalar_names(session: Session, run_id: str) -> ScalarNamesPublic:
    if session.get(SqlRun, run_id) is None:
        raise RunNotFound(f"run `{run_id}` does not exist")
    names = list(
        session.scalars(
            select(SqlScalar.name)
            .where(SqlScalar.run_id == run_id)
            .distinct()
            .order_by(SqlScalar.name)
        )
    )
    return ScalarNamesPublic(data=names, count=len(names))


def get_scalar_series(
    session: Session,
    run_id: str,
    *,
    name: str,
    rank: int = 0,
    start: int | None = None,
    end: int | None = None,
    after_step: int | None = None,
    limit: int | None = 10_000,
    max_points: int | None = None,
) -> ScalarSeriesPublic:
    """One logged scalar over steps, paged or downsampled like :func:`get_series`."""
    query = select(SqlScalar.step, SqlScalar.value, SqlScalar.time).where(
        SqlScalar.run_id == run_id, SqlScalar.name == name, SqlScalar.rank == rank
    )
    query = page_by_step(
        query,
        SqlScalar.step,
        start=start,
        end=end,
        after_step=after_step,
        limit=None if max_points is not None else limit,
    )
    rows = [tuple(r) for r in session.execute(query)]
    if not rows and after_step is None:
        if session.get(SqlRun, run_id) is None:
            raise RunNotFound(f"run `{run_id}` does not exist")
        if name not in list_scalar_names(session, run_id).data:
            raise ScalarNotFound(f"run `{run_id}` has no scalar `{name}`")
    rows, total, downsampled, next_after = _shape_series(rows, limit=limit, max_points=max_points)
    return ScalarSeriesPublic(
        name=name,
        rank=rank,
        steps=[r[0] for r in rows],
        values=as_floats([r[1] for r in rows]),
        times=[r[2] for r in rows],
        total=total,
        downsampled=downsampled,
        next_after_step=next_after,
    )


def unpack_histogram(row: SqlHistogram) -> tuple[list[float], list[int]]:
    """(edges, counts) of a stored histogram."""
    width = len(row.counts) // row.bins
    counts = np.frombuffer(row.counts, dtype="<u4" if width == 4 else "<u8")
    if row.edges is not None:
        edges = np.frombuffer(row.edges, dtype="<f8")
    else:
        assert row.lo is not None
        assert row.hi is not None
        edges = np.linspace(row.lo, row.hi, row.bins + 1)
    return edges.tolist(), counts.astype(np.int64).tolist()


def get_histograms(
    session: Session,
    run_id: str,
    *,
    tensor: str,
    kind: wire.Kind,
    rank: int = 0,
    step: int | None = None,
    start: int | None = None,
    end: int | None = None,
    after_step: int | None = None,
    limit: int = 1000,
) -> HistogramsPublic:
    """Histograms of one tensor: at one ``step``, or a page of a step range."""
    tensor_id = find_tensor_id(session, run_id, tensor, kind)
    if step is not None:
        start = end = step
    query = select(SqlHistogram).where(
        SqlHistogram.tensor_id == tensor_id, SqlHistogram.rank == rank
    )
    query = page_by_step(
        query, SqlHistogram.step, start=start, end=end, after_step=after_step, limit=limit
    )
    rows, next_after = cut_page(list(session.scalars(query)), limit, lambda row: row.step)
    data = []
    for row in rows:
        edges, counts = unpack_histogram(row)
        data.append(
            HistogramPublic(
                step=row.step,
                rank=row.rank,
                edges=edges,
                counts=counts,
                sample_size=row.sample_size,
            )
        )
    return HistogramsPublic(
        tensor=tensor, kind=kind, data=data, count=len(data), next_after_step=next_after
    )
