"""A run's measurements as files: long-format CSV, read and written in pages, and NumPy npz.

The CSV of a large run never sits in memory: `iter_csv` reads one page of rows
at a time, each in its own short read session, keyset-paged by (step, rank)
within one tensor (or scalar) after another, and yields that page as text.
The npz is a zip archive that NumPy writes whole, so `write_npz` does keep
every selected array in memory: filter large runs by tensor or steps.

Non-finite values are written as Python spells them: ``nan``, ``inf``, ``-inf``
(a NULL measurement is SQLite's NaN, see ``models``).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt
from sqlalchemy import ColumnElement, select, tuple_
from sqlalchemy.orm import Session, sessionmaker

from layerwatch import wire
from layerwatch_server.db import managed_session
from layerwatch_server.models import (
    WEIGHT_CHANGE_METRICS,
    SqlHistogram,
    SqlScalar,
    SqlStat,
    SqlTensor,
    SqlUnitMean,
    SqlWeightChange,
)
from layerwatch_server.store import codec
from layerwatch_server.store.paging import check_step_range
from layerwatch_server.store.runs import no_such_tensor, require_run
from layerwatch_server.store.scalars import require_scalars

Table = Literal["stats", "scalars", "histograms", "unit_means", "weight_changes"]
TABLES: tuple[Table, ...] = get_args(Table)
# Statistics stored as integer counts (`nonfinite`, `numel`): written as integers.
COUNT_STATS = frozenset(
    stat for stat in wire.STAT_NAMES if SqlStat.__table__.c[stat].type.python_type is int
)
HEADERS: dict[Table, tuple[str, ...]] = {
    "stats": ("tensor", "kind", "rank", "step", *wire.STAT_NAMES),
    "scalars": ("name", "rank", "step", "value", "time"),
    "histograms": ("tensor", "kind", "rank", "step", "sample_size", "edges", "counts"),
    "unit_means": ("tensor", "kind", "rank", "step", "unit", "mean"),
    "weight_changes": ("tensor", "rank", "step", "since_prev", "since_init", "update_ratio"),
}
# Rows per page and query: histograms hold up to 512 bins, unit means up to 4096 units.
PAGE_ROWS: dict[Table, int] = {"stats": 5000, "scalars": 5000, "histograms": 500,
                               "unit_means": 16, "weight_changes": 5000}  # fmt: skip


@dataclass(frozen=True)
class Tensor:
    id: int
    name: str
    kind: str


@dataclass(frozen=True)
class ExportPlan:
    """What one export reads: the run's chosen tensors and scalars, a step range, a rank."""

    run_id: str
    tensors: tuple[Tensor, ...]  # network order
    scalars: tuple[str, ...]
    start: int | None
    end: int | None
    rank: int | None  # None: every rank


def plan_export(
    session: Session,
    run_id: str,
    *,
    kind: wire.Kind | None = None,
    tensors: Sequence[str] = (),
    names: Sequence[str] = (),
    start: int | None = None,
    end: int | None = None,
    rank: int | None = None,
) -> ExportPlan:
    """Check the filters against the run: every named tensor (of `kind`) and scalar must exist."""
    require_run(session, run_id)
    check_step_range(start, end)
    query = select(SqlTensor.id, SqlTensor.name, SqlTensor.kind).where(SqlTensor.run_id == run_id)
    if kind is not None:
        query = query.where(SqlTensor.kind == kind)
    chosen = [Tensor(*row) for row in session.execute(query.order_by(SqlTensor.id))]
    if tensors:
        missing = set(tensors) - {tensor.name for tensor in chosen}
        if missing:
            raise no_such_tensor(run_id, sorted(missing)[0], kind)
        chosen = [tensor for tensor in chosen if tensor.name in tensors]
    scalars = require_scalars(session, run_id, names)
    if names:
        scalars = [name for name in scalars if name in names]
    return ExportPlan(run_id, tuple(chosen), tuple(scalars), start, end, rank)


# -- reading ---------------------------------------------------------------------------

# A Select: its type parameters differ between SQLAlchemy 2.0 and 2.1.
_Query = Any
_Pages = Iterator[tuple["_Source", list[Any]]]


@dataclass(frozen=True)
class _Source:
    """One keyset-paged query: a tensor's or a scalar's rows of one table."""

    label: tuple[str, ...]  # leading CSV cells: (tensor, kind), (tensor,) or (name,)
    query: _Query
    step: Any
    rank: Any


def _sources(plan: ExportPlan, table: Table) -> Iterator[_Source]:
    if table == "scalars":
        for name in plan.scalars:
            query = select(SqlScalar.rank, SqlScalar.step, SqlScalar.value, SqlScalar.time).where(
                SqlScalar.run_id == plan.run_id, SqlScalar.name == name
            )
            yield _Source((name,), query, SqlScalar.step, SqlScalar.rank)
        return
    model: Any = {"stats": SqlStat, "histograms": SqlHistogram, "unit_means": SqlUnitMean,
                  "weight_changes": SqlWeightChange}[table]  # fmt: skip
    for tensor in plan.tensors:
        if table == "weight_changes" and tensor.kind != "weight":
            continue
        if table == "stats":
            stats = [getattr(SqlStat, stat) for stat in wire.STAT_NAMES]
            columns: list[Any] = [SqlStat.rank, SqlStat.step, *stats]
        elif table == "weight_changes":
            metrics = [getattr(model, metric) for metric in WEIGHT_CHANGE_METRICS]
            columns = [model.rank, model.step, *metrics]
        else:
            columns = [model]
        label = (tensor.name,) if table == "weight_changes" else (tensor.name, tensor.kind)
        query = select(*columns).where(model.tensor_id == tensor.id)
        yield _Source(label, query, model.step, model.rank)


def _where(source: _Source, plan: ExportPlan) -> _Query:
    query = source.query
    if plan.rank is not None:
        query = query.where(source.rank == plan.rank)
    if plan.start is not None:
        query = query.where(source.step >= plan.start)
    if plan.end is not None:
        query = query.where(source.step <= plan.end)
    return query.order_by(source.step, source.rank)


def _after(source: _Source, cursor: tuple[int, int]) -> ColumnElement[bool]:
    return tuple_(source.step, source.rank) > tuple_(*cursor)


def _pages(sessions: sessionmaker[Session], plan: ExportPlan, table: Table) -> _Pages:
    """Each source's rows, a page at a time; every page in its own short read session."""
    size = PAGE_ROWS[table]
    whole_rows = table in ("histograms", "unit_means")  # ORM objects, not columns
    for source in _sources(plan, table):
        query = _where(source, plan)
        cursor: tuple[int, int] | None = None
        while True:
            page = query if cursor is None else query.where(_after(source, cursor))
            with managed_session(sessions) as session:
                result = session.execute(page.limit(size))
                rows = list(result.scalars() if whole_rows else result)
                if whole_rows:
                    session.expunge_all()
            if rows:
                yield source, rows
            if len(rows) < size:
                break
            last: Any = rows[-1]
            cursor = (last.step, last.rank)


# -- CSV -------------------------------------------------------------------------------


def _number(value: float | None) -> str:
    """A measurement: NULL is SQLite's NaN; repr gives `nan`, `inf`, `-inf` and round-trips."""
    return "nan" if value is None else repr(float(value))


def _optional(value: float | int | None) -> str:
    return "" if value is None else repr(value)


def _stat_cell(stat: str, value: float | None) -> str:
    return str(int(value)) if stat in COUNT_STATS and value is not None else _number(value)


def _csv_rows(table: Table, label: tuple[str, ...], row: Any) -> Iterator[Sequence[object]]:
    if table == "stats":
        cells = [_stat_cell(stat, getattr(row, stat)) for stat in wire.STAT_NAMES]
        yield (*label, row.rank, row.step, *cells)
    elif table == "scalars":
        yield (*label, row.rank, row.step, _number(row.value), _optional(row.time))
    elif table == "weight_changes":
        cells = [_number(getattr(row, metric)) for metric in WEIGHT_CHANGE_METRICS]
        yield (*label, row.rank, row.step, *cells)
    elif table == "histograms":
        histogram = codec.unpack_histogram(row)
        edges, counts = histogram.edges.tolist(), histogram.counts.tolist()
        yield (*label, row.rank, row.step, _optional(row.sample_size),
               json.dumps(edges), json.dumps(counts))  # fmt: skip
    else:
        for unit, mean in enumerate(codec.unpack_unit_means(row.means).tolist()):
            yield (*label, row.rank, row.step, unit, _number(mean))


def iter_csv(sessions: sessionmaker[Session], plan: ExportPlan, table: Table) -> Iterator[str]:
    """The CSV text of `table` for `plan`: a header line, then one chunk per page read."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(HEADERS[table])
    yield buffer.getvalue()
    for source, rows in _pages(sessions, plan, table):
        buffer.seek(0)
        buffer.truncate()
        for row in rows:
            writer.writerows(_csv_rows(table, source.label, row))
        yield buffer.getvalue()


# -- npz -------------------------------------------------------------------------------

Arrays = dict[str, Any]  # name -> ndarray (Any: savez_compressed takes **ArrayLike)


def _steps(values: Sequence[int]) -> npt.NDArray[np.int64]:
    return np.array(values, dtype=np.int64).reshape(len(values))


def _collect(
    session: Session, plan: ExportPlan, table: Table
) -> Iterator[tuple[_Source, list[Any]]]:
    """Every source's rows of `table` at once (npz is written whole anyway)."""
    for source in _sources(plan, table):
        result = session.execute(_where(source, plan))
        yield source, list(result.scalars() if table in ("histograms", "unit_means") else result)


def _padded(rows: Sequence[npt.NDArray[Any]], fill: float, dtype: type = np.float64) -> Any:
    """Rows of different lengths (bins or units changed within the run) as one matrix."""
    width = max((len(row) for row in rows), default=0)
    matrix: Any = np.full((len(rows), width), fill, dtype=dtype)
    for i, row in enumerate(rows):
        matrix[i, : len(row)] = row
    return matrix


def _npz_arrays(session: Session, plan: ExportPlan) -> Arrays:
    arrays: Arrays = {}
    for source, rows in _collect(session, plan, "stats"):
        prefix = f"stats/{source.label[1]}/{source.label[0]}"
        arrays[f"{prefix}/steps"] = _steps([row.step for row in rows])
        for stat in wire.STAT_NAMES:
            arrays[f"{prefix}/{stat}"] = codec.floats([getattr(row, stat) for row in rows])
    for source, rows in _collect(session, plan, "scalars"):
        arrays[f"scalars/{source.label[0]}/steps"] = _steps([row.step for row in rows])
        arrays[f"scalars/{source.label[0]}/values"] = codec.floats([row.value for row in rows])
    for source, rows in _collect(session, plan, "weight_changes"):
        prefix = f"weight_changes/{source.label[0]}"
        arrays[f"{prefix}/steps"] = _steps([row.step for row in rows])
        for metric in WEIGHT_CHANGE_METRICS:
            arrays[f"{prefix}/{metric}"] = codec.floats([getattr(row, metric) for row in rows])
    for source, rows in _collect(session, plan, "unit_means"):
        if source.label[1] != "activation":
            continue  # the client sends unit means of activations only
        means = [codec.unpack_unit_means(row.means) for row in rows]
        arrays[f"unit_means/{source.label[0]}/steps"] = _steps([row.step for row in rows])
        arrays[f"unit_means/{source.label[0]}/means"] = _padded(means, np.nan)
    for source, rows in _collect(session, plan, "histograms"):
        prefix = f"histograms/{source.label[1]}/{source.label[0]}"
        unpacked = codec.unpack_histograms(rows)
        arrays[f"{prefix}/steps"] = _steps([row.step for row in rows])
        arrays[f"{prefix}/edges"] = _padded([h.edges for h in unpacked], np.nan)
        arrays[f"{prefix}/counts"] = _padded([h.counts for h in unpacked], 0, np.int64)
        arrays[f"{prefix}/sample_size"] = _steps(
            [-1 if row.sample_size is None else row.sample_size for row in rows]
        )
    return arrays


def write_npz(session: Session, plan: ExportPlan) -> bytes:
    """The plan's series as a compressed npz (one rank: `plan.rank`, else 0)."""
    if plan.rank is None:
        plan = ExportPlan(plan.run_id, plan.tensors, plan.scalars, plan.start, plan.end, 0)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **_npz_arrays(session, plan))
    return buffer.getvalue()


__all__ = ["TABLES", "ExportPlan", "Table", "iter_csv", "plan_export", "write_npz"]
