"""Storing a batch: one transaction, bulk inserts, idempotent by construction.

A batch id seen before makes the batch a no-op. Every measurement row has a
natural key ((tensor, step, rank) or (run, name, step, rank)); the fast path
is one plain bulk INSERT per table. Only when a key already exists (a batch
re-sent under a new id, or a different writer) does the slow path compare:
equal values are skipped, different ones refuse the whole batch with a
Conflict, so stored history is never overwritten.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from sqlalchemy import Table, insert, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from layerwatch import wire
from layerwatch_server.errors import Conflict, RunNotFound
from layerwatch_server.models import (
    SqlBatch,
    SqlHistogram,
    SqlRun,
    SqlScalar,
    SqlStat,
    SqlTensor,
)

Row = dict[str, Any]
_STATS: Table = SqlStat.__table__  # type: ignore[assignment]
_HISTOGRAMS: Table = SqlHistogram.__table__  # type: ignore[assignment]
_SCALARS: Table = SqlScalar.__table__  # type: ignore[assignment]
_TENSORS: Table = SqlTensor.__table__  # type: ignore[assignment]


def ingest_batch(
    session: Session, run_id: str, batch: wire.Batch, *, digest: str
) -> wire.BatchReceipt:
    """Store ``batch`` for run ``run_id`` in the session's transaction.

    ``digest`` identifies the batch's content: the same ``batch_id`` with a
    different digest is refused rather than silently treated as a replay.
    """
    if session.get(SqlRun, run_id) is None:
        raise RunNotFound(f"run `{run_id}` does not exist")
    previous = _previous_batch(session, run_id, batch.batch_id)
    if previous is not None:
        return _replayed(previous, batch, digest)

    tensor_ids = _tensor_ids(session, run_id, batch)
    stats = _stat_rows(batch, tensor_ids)
    histograms = _histogram_rows(batch, tensor_ids)
    scalars = _scalar_rows(batch, run_id)
    _insert(session, _STATS, stats, _describe_stat(tensor_ids))
    _insert(session, _HISTOGRAMS, histograms, _describe_stat(tensor_ids, "histogram"))
    _insert(session, _SCALARS, scalars, lambda key: f"scalar `{key[1]}` at step {key[2]}")

    try:
        with session.begin_nested():
            session.add(
                SqlBatch(
                    run_id=run_id,
                    batch_id=batch.batch_id,
                    rank=batch.rank,
                    digest=digest,
                    stats=len(stats),
                    histograms=len(histograms),
                    scalars=len(scalars),
                )
            )
    except IntegrityError:
        # The same batch arrived twice at once and the other copy committed first.
        previous = _previous_batch(session, run_id, batch.batch_id)
        if previous is None:
            raise
        return _replayed(previous, batch, digest)
    return wire.BatchReceipt(
        batch_id=batch.batch_id,
        duplicate=False,
        stats=len(stats),
        histograms=len(histograms),
        scalars=len(scalars),
    )


def _previous_batch(session: Session, run_id: str, batch_id: str) -> SqlBatch | None:
    return session.get(SqlBatch, (run_id, batch_id), populate_existing=True)


def _replayed(previous: SqlBatch, batch: wire.Batch, digest: str) -> wire.BatchReceipt:
    if previous.digest != digest:
        raise Conflict(
            f"batch `{batch.batch_id}` was already stored with different content; "
            "a batch id may only be reused to resend the same batch"
        )
    return wire.BatchReceipt(
        batch_id=batch.batch_id,
        duplicate=True,
        stats=previous.stats,
        histograms=previous.histograms,
        scalars=previous.scalars,
    )


def _insert_ignoring_duplicates(session: Session, table: Table, rows: list[Row]) -> None:
    dialect = session.get_bind().dialect.name
    module: Any = postgresql if dialect == "postgresql" else sqlite
    session.execute(module.insert(table).on_conflict_do_nothing(), rows)


def _tensor_ids(session: Session, run_id: str, batch: wire.Batch) -> dict[tuple[str, str], int]:
    """Ids of every tensor the batch mentions, creating the new ones in batch order."""
    info = {(t.name, t.kind): t for t in batch.tensors}
    wanted: dict[tuple[str, str], None] = dict.fromkeys(info)
    for block in (*batch.stats, *batch.histograms):
        wanted.setdefault((block.name, block.kind), None)
    if not wanted:
        return {}

    def existing() -> dict[tuple[str, str], SqlTensor]:
        rows = session.scalars(select(SqlTensor).where(SqlTensor.run_id == run_id))
        return {(t.name, t.kind): t for t in rows if (t.name, t.kind) in wanted}

    known = existing()
    missing = [key for key in wanted if key not in known]
    if missing:
        _insert_ignoring_duplicates(
            session,
            _TENSORS,
            [
                {"run_id": run_id, "name": n, "kind": k, **_tensor_meta(info.get((n, k)))}
                for n, k in missing
            ],
        )
        known = existing()
    for key, meta in info.items():  # newer metadata (e.g. a first shape) fills gaps
        tensor = known[key]
        for field, value in _tensor_meta(meta).items():
            if value is not None and getattr(tensor, field) != value:
                setattr(tensor, field, value)
    session.flush()
    return {key: tensor.id for key, tensor in known.items()}


def _tensor_meta(info: wire.TensorInfo | None) -> Row:
    if info is None:
        return {"module_type": None, "shape": None, "dtype": None}
    return {"module_type": info.module_type, "shape": info.shape, "dtype": info.dtype}


def _stat_rows(batch: wire.Batch, tensor_ids: dict[tuple[str, str], int]) -> list[Row]:
    rank = batch.rank
    rows: list[Row] = []
    for block in batch.stats:
        tensor_id = tensor_ids[(block.name, block.kind)]
        columns = [getattr(block, stat) for stat in wire.STAT_NAMES]
        rows.extend(
            {
                "tensor_id": tensor_id,
                "step": step,
                "rank": rank,
                **dict(zip(wire.STAT_NAMES, values, strict=False)),
            }
            for step, *values in zip(block.steps, *columns, strict=False)
        )
    return rows


def pack_counts(counts: Sequence[int]) -> bytes:
    """Counts as little-endian uint32 when they fit, else uint64."""
    array = np.asarray(counts, dtype=np.uint64)
    if array.size and int(array.max()) >= 2**32:
        return array.astype("<u8").tobytes()
    return array.astype("<u4").tobytes()


def _histogram_rows(batch: wire.Batch, tensor_ids: dict[tuple[str, str], int]) -> list[Row]:
    return [
        {
            "tensor_id": tensor_ids[(h.name, h.kind)],
            "step": h.step,
            "rank": batch.rank,
            "bins": len(h.counts),
            "lo": h.lo,
            "hi": h.hi,
            "edges": None if h.edges is None else np.asarray(h.edges, "<f8").tobytes(),
            "counts": pack_counts(h.counts),
        }
        for h in batch.histograms
    ]


def _scalar_rows(batch: wire.Batch, run_id: str) -> list[Row]:
    rows: list[Row] = []
    for block in batch.scalars:
        times: Iterable[float | None] = block.times or [None] * len(block.steps)
        rows.extend(
            {
                "run_id": run_id,
                "name": block.name,
                "step": step,
                "rank": batch.rank,
                "value": value,
                "time": time,
            }
            for step, value, time in zip(block.steps, block.values, times, strict=False)
        )
    return rows


def _describe_stat(
    tensor_ids: dict[tuple[str, str], int], what: str = "statistics"
) -> Callable[[tuple[Any, ...]], str]:
    names = {tensor_id: key for key, tensor_id in tensor_ids.items()}

    def describe(key: tuple[Any, ...]) -> str:
        name, kind = names[key[0]]
        return f"{what} of {kind} `{name}` at step {key[1]} (rank {key[2]})"

    return describe


def _insert(
    session: Session, table: Table, rows: list[Row], describe: Callable[[tuple[Any, ...]], str]
) -> None:
    """Bulk insert; on a key that exists, keep equal rows and refuse different ones."""
    if not rows:
        return
    try:
        with session.begin_nested():
            session.execute(insert(table), rows)
        return
    except IntegrityError:
        pass
    key_columns = [c.name for c in table.primary_key.columns]
    stored = _existing_rows(session, table, key_columns, rows)
    fresh = []
    for row in rows:
        key = tuple(row[c] for c in key_columns)
        old = stored.get(key)
        if old is None:
            fresh.append(row)
        elif not all(_same(row[c], old[c]) for c in row):
            raise Conflict(f"{describe(key)} is already stored with different values")
    if fresh:
        session.execute(insert(table), fresh)


def _existing_rows(
    session: Session, table: Table, key_columns: list[str], rows: list[Row]
) -> dict[tuple[Any, ...], Row]:
    keys = {tuple(row[c] for c in key_columns) for row in rows}
    columns = [table.c[c] for c in key_columns]
    found: dict[tuple[Any, ...], Row] = {}
    key_list = list(keys)
    for start in range(0, len(key_list), 500):
        chunk = key_list[start : start + 500]
        result = session.execute(select(table).where(tuple_(*columns).in_(chunk)))
        for mapping in result.mappings():
            found[tuple(mapping[c] for c in key_columns)] = dict(mapping)
    return found


def _same(new: Any, old: Any) -> bool:
    """Equality where NaN equals NaN and SQLite's NULL stands for NaN."""
    if isinstance(new, float) and math.isnan(new):
        return old is None or (isinstance(old, float) and math.isnan(old))
    if new is None:
        return old is None
    return bool(new == old)
