"""Measurements over steps, a page at a time: keyset pages by step, or a range downsampled."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import Select
from sqlalchemy.orm import Session

from layerwatch_server.downsample import envelope_indices
from layerwatch_server.errors import InvalidQuery

_Query = TypeVar("_Query", bound=Select)  # type: ignore[type-arg]
_Row = TypeVar("_Row")


def check_step_range(start: int | None, end: int | None) -> None:
    """Refuse a step range that is empty by construction."""
    if start is not None and end is not None and start > end:
        raise InvalidQuery(f"`start` ({start}) is after `end` ({end})")


def page_by_step(
    query: _Query,
    step_column: Any,
    *,
    start: int | None,
    end: int | None,
    after_step: int | None,
    limit: int | None,
) -> _Query:
    """``query`` within [start, end] after ``after_step``, by step, one row over ``limit``."""
    if start is not None:
        query = query.where(step_column >= start)
    if end is not None:
        query = query.where(step_column <= end)
    if after_step is not None:
        query = query.where(step_column > after_step)
    query = query.order_by(step_column)
    return query if limit is None else query.limit(limit + 1)


def cut_page(
    rows: list[_Row], limit: int, step_of: Callable[[_Row], int]
) -> tuple[list[_Row], int | None]:
    """A page fetched with one row too many: the page, and the step to read on after."""
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, step_of(rows[-1])


def fetch_tuples(session: Session, query: Select) -> list[tuple[Any, ...]]:  # type: ignore[type-arg]
    """The rows of ``query`` as plain tuples from the driver's cursor.

    For long reads of plain numbers: SQLAlchemy's result rows cost more than the
    database's own work (10,000 rows: about 10 ms through the ORM, 4 ms here).
    Columns come as the driver gives them: SQLite's NULL for NaN stays None.
    """
    connection = session.connection()
    compiled = query.compile(
        dialect=connection.dialect, compile_kwargs={"render_postcompile": True}
    )
    params: Any = compiled.params
    if compiled.positional:
        params = [params[name] for name in compiled.positiontup or ()]
    cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(str(compiled), params)
        rows: list[tuple[Any, ...]] = cursor.fetchall()
    finally:
        cursor.close()
    return rows


@dataclass(frozen=True)
class SeriesPage:
    """(step, value, ...) rows: a page at full resolution, or a range thinned."""

    rows: list[tuple[Any, ...]]
    total: int  # rows in the page, or in the whole range before thinning
    downsampled: bool
    next_after_step: int | None


def read_series(
    session: Session,
    query: Select,  # type: ignore[type-arg]
    step_column: Any,
    *,
    start: int | None,
    end: int | None,
    after_step: int | None,
    limit: int | None,
    max_points: int | None,
) -> SeriesPage:
    """Read ``query`` (columns ``step`` and ``value``) as a page of ``limit`` rows, or, with
    ``max_points``, the whole range thinned to its min/max envelope."""
    if max_points is not None:
        query = page_by_step(query, step_column, start=start, end=end, after_step=after_step,
                             limit=None)  # fmt: skip
        rows = fetch_tuples(session, query)
        values = np.array([row[1] for row in rows], dtype=np.float64)
        keep = envelope_indices(values, max_points)
        return SeriesPage([rows[i] for i in keep], len(rows), len(keep) < len(rows), None)
    query = page_by_step(query, step_column, start=start, end=end, after_step=after_step,
                         limit=limit)  # fmt: skip
    rows = fetch_tuples(session, query)
    if limit is None:
        return SeriesPage(rows, len(rows), False, None)
    page, next_after = cut_page(rows, limit, lambda row: row[0])
    return SeriesPage(page, len(page), False, next_after)
