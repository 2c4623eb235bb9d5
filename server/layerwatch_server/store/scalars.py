"""Scalars a run logged (`run.log`): their names, and one scalar over steps."""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import numpy.typing as npt
from sqlalchemy import select
from sqlalchemy.orm import Session

from layerwatch_server.errors import ScalarNotFound
from layerwatch_server.models import SqlScalar
from layerwatch_server.schemas import ScalarNamesPublic, ScalarSeriesPublic
from layerwatch_server.store import codec
from layerwatch_server.store.paging import fetch_tuples, read_series
from layerwatch_server.store.runs import require_run


def require_scalars(session: Session, run_id: str, names: Collection[str] = ()) -> list[str]:
    """The names of the run's scalars, sorted; raises unless the run has every one of ``names``."""
    require_run(session, run_id)
    logged = list(
        session.scalars(
            select(SqlScalar.name)
            .where(SqlScalar.run_id == run_id)
            .distinct()
            .order_by(SqlScalar.name)
        )
    )
    missing = sorted(set(names) - set(logged))
    if missing:
        raise ScalarNotFound(f"run `{run_id}` has no scalar `{missing[0]}`")
    return logged


def list_scalar_names(session: Session, run_id: str) -> ScalarNamesPublic:
    names = require_scalars(session, run_id)
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
    """One logged scalar over steps, paged or downsampled like `series.get_series`."""
    query = select(SqlScalar.step, SqlScalar.value, SqlScalar.time).where(
        SqlScalar.run_id == run_id, SqlScalar.name == name, SqlScalar.rank == rank
    )
    page = read_series(session, query, SqlScalar.step, start=start, end=end,
                       after_step=after_step, limit=limit, max_points=max_points)  # fmt: skip
    if not page.rows and after_step is None:
        require_scalars(session, run_id, [name])  # say why there is nothing
    steps = [row[0] for row in page.rows]
    values = [row[1] for row in page.rows]
    times = [row[2] for row in page.rows]
    # Built without validation: these are the database's own numbers, 10,000 a page
    return ScalarSeriesPublic.model_construct(
        name=name,
        rank=rank,
        steps=steps,
        values=codec.float_list(values),
        times=times,
        total=page.total,
        downsampled=page.downsampled,
        next_after_step=page.next_after_step,
    )


def read_scalar(
    session: Session, run_id: str, name: str, *, rank: int = 0
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Every (step, value) of one scalar as arrays, NaN for NaN: for the diagnosis."""
    query = (
        select(SqlScalar.step, SqlScalar.value)
        .where(SqlScalar.run_id == run_id, SqlScalar.name == name, SqlScalar.rank == rank)
        .order_by(SqlScalar.step)
    )
    rows = fetch_tuples(session, query)
    steps = np.array([row[0] for row in rows], dtype=np.int64)
    return steps, codec.floats([row[1] for row in rows])
