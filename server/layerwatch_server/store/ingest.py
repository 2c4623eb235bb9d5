"""Storing a batch: one transaction, bulk inserts, idempotent by construction.

A batch id seen before makes the batch a no-op. Every measurement row has a
natural key ((tensor, step, rank) or (run, name, step, rank)); the fast path
is one plain bulk INSERT per table: an ``executemany`` of tuples on the
driver's cursor, because a dict per row bound through SQLAlchemy's compiled
insert costs several times the database's own work. Only when a key already
exists (a batch re-sent under a new id, or a different writer) does the slow
path compare: equal values are skipped, different ones refuse the whole batch
with a Conflict, so stored history is never overwritten.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from itertools import repeat
from typing import Any

from sqlalchemy import Table, select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from layerwatch import wire
from layerwatch_server.db import insert_ignoring_duplicates
from layerwatch_server.errors import Conflict
from layerwatch_server.models import (
    SqlBatch,
    SqlHistogram,
    SqlModule,
    SqlNonfiniteEvent,
    SqlScalar,
    SqlStat,
    SqlTensor,
    SqlUnitMean,
    SqlWeightChange,
    utcnow,
)
from layerwatch_server.store import codec
from layerwatch_server.store.rollups import roll_up
from layerwatch_server.store.runs import require_run, touch_run

Row = dict[str, Any]
Record = tuple[Any, ...]  # one measurement row, in the order of its _*_COLUMNS below
_STATS: Table = SqlStat.__table__  # type: ignore[assignment]
_HISTOGRAMS: Table = SqlHistogram.__table__  # type: ignore[assignment]
_SCALARS: Table = SqlScalar.__table__  # type: ignore[assignment]
_UNIT_MEANS: Table = SqlUnitMean.__table__  # type: ignore[assignment]
_WEIGHT_CHANGES: Table = SqlWeightChange.__table__  # type: ignore[assignment]
_MODULES: Table = SqlModule.__table__  # type: ignore[assignment]
_TENSORS: Table = SqlTensor.__table__  # type: ignore[assignment]
_BATCHES: Table = SqlBatch.__table__  # type: ignore[assignment]
_NONFINITE: Table = SqlNonfiniteEvent.__table__  # type: ignore[assignment]
_STAT_COLUMNS = ("tensor_id", "step", "rank", *wire.STAT_NAMES)
_HISTOGRAM_COLUMNS = (
    "tensor_id", "step", "rank", "bins", "lo", "hi", "edges", "counts", "sample_size",
)  # fmt: skip
_SCALAR_COLUMNS = ("run_id", "name", "step", "rank", "value", "time")
_UNIT_MEAN_COLUMNS = ("tensor_id", "step", "rank", "units", "means")
_WEIGHT_CHANGE_COLUMNS = ("tensor_id", "step", "rank", "since_prev", "since_init", "update_ratio")
_RECEIPT_COUNTS = ("stats", "histograms", "scalars", "unit_means", "weight_changes")
_PLACEHOLDERS = {"qmark": "?", "format": "%s", "pyformat": "%s"}


def ingest_batch(
    session: Session, run_id: str, batch: wire.Batch, *, digest: str
) -> wire.BatchReceipt:
    """Store ``batch`` for run ``run_id`` in the session's transaction.

    ``digest`` identifies the batch's content: the same ``batch_id`` with a
    different digest is refused rather than silently treated as a replay.
    """
    require_run(session, run_id)
    touch_run(session, run_id)
    counts = {name: sum(len(block.steps) for block in getattr(batch, name))
              for name in _RECEIPT_COUNTS}  # fmt: skip
    receipt = wire.BatchReceipt(
        batch_id=batch.batch_id, duplicate=False, models=len(batch.models), **counts
    )
    # Claim the batch id first. A copy of this batch being stored at this moment
    # makes PostgreSQL wait for it here, and then find the id taken.
    claimed = _claim_batch(
        session,
        {"run_id": run_id, "batch_id": batch.batch_id, "rank": batch.rank, "digest": digest,
         "received_at": utcnow(), "models": receipt.models, **counts},
    )  # fmt: skip
    if not claimed:
        previous = session.get(SqlBatch, (run_id, batch.batch_id), populate_existing=True)
        assert previous is not None
        return _replayed(previous, batch, digest)

    tensor_ids = _tensor_ids(session, run_id, batch)
    _insert(session, _STATS, _STAT_COLUMNS, _stat_rows(batch, tensor_ids),
            _describe_stat(tensor_ids))  # fmt: skip
    roll_up(session, batch, tensor_ids)
    _insert(
        session,
        _HISTOGRAMS,
        _HISTOGRAM_COLUMNS,
        _histogram_rows(batch, tensor_ids),
        _describe_stat(tensor_ids, "histogram"),
    )
    _insert(
        session,
        _UNIT_MEANS,
        _UNIT_MEAN_COLUMNS,
        _unit_mean_rows(batch, tensor_ids),
        _describe_stat(tensor_ids, "unit means"),
    )
    _insert(
        session,
        _WEIGHT_CHANGES,
        _WEIGHT_CHANGE_COLUMNS,
        _weight_change_rows(batch, tensor_ids),
        _describe_stat(tensor_ids, "weight change"),
    )
    _insert(
        session, _SCALARS, _SCALAR_COLUMNS, _scalar_rows(batch, run_id),
        lambda key: f"scalar `{key[1]}` at step {key[2]}",
    )  # fmt: skip
    _store_models(session, run_id, batch)
    _store_nonfinite(session, run_id, batch)
    return receipt


def _replayed(previous: SqlBatch, batch: wire.Batch, digest: str) -> wire.BatchReceipt:
    if previous.digest != digest:
        raise Conflict(
            f"batch `{batch.batch_id}` was already stored with different content; "
            "a batch id may only be reused to resend the same batch"
        )
    return wire.BatchReceipt(
        batch_id=batch.batch_id,
        duplicate=True,
        models=previous.models,
        **{name: getattr(previous, name) for name in _RECEIPT_COUNTS},
    )


def _claim_batch(session: Session, row: Row) -> bool:
    """Insert the batch row unless its id is taken; True when this call inserted it."""
    # RETURNING, not rowcount: drivers do not all count ON CONFLICT DO NOTHING.
    statement = insert_ignoring_duplicates(session, _BATCHES).returning(_BATCHES.c.batch_id)
    return session.execute(statement, row).first() is not None


def _tensor_ids(session: Session, run_id: str, batch: wire.Batch) -> dict[tuple[str, str], int]:
    """Ids of every tensor the batch mentions, creating the new ones in batch order."""
    info: dict[tuple[str, str], wire.TensorInfo] = {(t.name, t.kind): t for t in batch.tensors}
    wanted: dict[tuple[str, str], None] = dict.fromkeys(info)
    blocks: list[wire.Stats | wire.Histograms | wire.UnitMeans] = [
        *batch.stats, *batch.histograms, *batch.unit_means,
    ]  # fmt: skip
    for block in blocks:
        wanted.setdefault((block.name, block.kind), None)
    for change in batch.weight_changes:
        wanted.setdefault((change.name, "weight"), None)
    if not wanted:
        return {}

    def existing() -> dict[tuple[str, str], int]:
        # Plain columns, not ORM objects: a run may have many tensors, every batch asks.
        rows = session.execute(
            select(SqlTensor.name, SqlTensor.kind, SqlTensor.id).where(SqlTensor.run_id == run_id)
        )
        return {(name, kind): id_ for name, kind, id_ in rows if (name, kind) in wanted}

    known = existing()
    missing = [key for key in wanted if key not in known]
    if missing:
        session.execute(
            insert_ignoring_duplicates(session, _TENSORS),
            [
                {"run_id": run_id, "name": n, "kind": k, **_tensor_meta(info.get((n, k)))}
                for n, k in missing
            ],
        )
        known = existing()
    if info:  # newer metadata (e.g. a first shape) fills gaps
        ids = {known[key]: meta for key, meta in info.items()}
        for tensor in session.scalars(select(SqlTensor).where(SqlTensor.run_id == run_id)):
            if tensor.id in ids:
                for field, value in _tensor_meta(ids[tensor.id]).items():
                    if value is not None and getattr(tensor, field) != value:
                        setattr(tensor, field, value)
    session.flush()
    return known


def _tensor_meta(info: wire.TensorInfo | None) -> Row:
    if info is None:
        return {"module_type": None, "shape": None, "dtype": None}
    return {"module_type": info.module_type, "shape": info.shape, "dtype": info.dtype}


def _stat_rows(batch: wire.Batch, tensor_ids: dict[tuple[str, str], int]) -> list[Record]:
    rows: list[Record] = []
    for block in batch.stats:
        n = len(block.steps)
        tensor_id = tensor_ids[(block.name, block.kind)]
        columns = [getattr(block, stat) for stat in wire.STAT_NAMES]
        rows.extend(
            zip(repeat(tensor_id, n), block.steps, repeat(batch.rank, n), *columns, strict=False)
        )
    return rows


def _histogram_rows(batch: wire.Batch, tensor_ids: dict[tuple[str, str], int]) -> list[Record]:
    # Packed for the whole batch at once: packing costs a few array passes per call
    counts = [c for block in batch.histograms for c in block.counts]
    lo: list[float | None] = []
    hi: list[float | None] = []
    for block in batch.histograms:
        lo.extend(block.lo or repeat(None, len(block.steps)))
        hi.extend(block.hi or repeat(None, len(block.steps)))
    packed, kept_lo, kept_hi = codec.pack_histograms(counts, lo, hi)
    rows: list[Record] = []
    at = 0
    for block in batch.histograms:
        n = len(block.steps)
        tensor_id = tensor_ids[(block.name, block.kind)]
        bins = map(wire.bin_count, block.counts)
        edges: Iterable[bytes | None] = repeat(None, n)
        sampled: Iterable[int | None] = block.sample_size or repeat(None, n)
        if block.edges is not None:
            edges = map(codec.pack_edges, block.edges)
        rows.extend(
            zip(
                repeat(tensor_id, n), block.steps, repeat(batch.rank, n), bins,
                kept_lo[at : at + n], kept_hi[at : at + n], edges, packed[at : at + n], sampled,
                strict=False,
            )
        )  # fmt: skip
        at += n
    return rows


def _unit_mean_rows(batch: wire.Batch, tensor_ids: dict[tuple[str, str], int]) -> list[Record]:
    rows: list[Record] = []
    for block in batch.unit_means:
        n = len(block.steps)
        tensor_id = tensor_ids[(block.name, block.kind)]
        units = (len(values) // 4 for values in block.values)
        rows.extend(
            zip(repeat(tensor_id, n), block.steps, repeat(batch.rank, n), units, block.values,
                strict=False)
        )  # fmt: skip
    return rows


def _weight_change_rows(batch: wire.Batch, tensor_ids: dict[tuple[str, str], int]) -> list[Record]:
    rows: list[Record] = []
    for block in batch.weight_changes:
        n = len(block.steps)
        tensor_id = tensor_ids[(block.name, "weight")]
        rows.extend(
            zip(repeat(tensor_id, n), block.steps, repeat(batch.rank, n), block.since_prev,
                block.since_init, block.update_ratio, strict=False)
        )  # fmt: skip
    return rows


def _store_models(session: Session, run_id: str, batch: wire.Batch) -> None:
    """Keep the first tree each rank sends for a model; a later one is ignored, not refused.

    A resumed run sends its tree again; refusing a batch over a changed tree
    would throw its measurements away with it.
    """
    rows = [
        {"run_id": run_id, "rank": batch.rank, "model": tree.name, "path": module.path,
         "position": position, "type": module.type, "params": module.params,
         "trainable": module.trainable, "inputs": module.inputs, "outputs": module.outputs}
        for tree in batch.models
        for position, module in enumerate(tree.modules)
    ]  # fmt: skip
    for start in range(0, len(rows), 1000):
        session.execute(insert_ignoring_duplicates(session, _MODULES), rows[start : start + 1000])


def _store_nonfinite(session: Session, run_id: str, batch: wire.Batch) -> None:
    """Store the batch's non-finite events; one stored before (or given twice) with the
    same `also` is skipped, with another refuses the batch, like a measurement row."""
    if not batch.nonfinite:
        return
    steps = {event.step for event in batch.nonfinite}
    stored = {
        (step, tensor, kind): also
        for step, tensor, kind, also in session.execute(
            select(SqlNonfiniteEvent.step, SqlNonfiniteEvent.tensor, SqlNonfiniteEvent.kind,
                   SqlNonfiniteEvent.also)
            .where(SqlNonfiniteEvent.run_id == run_id, SqlNonfiniteEvent.rank == batch.rank,
                   SqlNonfiniteEvent.step.in_(steps))
        )
    }  # fmt: skip
    fresh: list[Row] = []
    for event in batch.nonfinite:
        key = (event.step, event.tensor, event.kind)
        if key in stored:
            if stored[key] != event.also:
                raise Conflict(
                    f"non-finite event of {event.kind} `{event.tensor}` at step {event.step} "
                    f"(rank {batch.rank}) is already stored with different values"
                )
            continue
        stored[key] = event.also
        fresh.append({"run_id": run_id, "rank": batch.rank, "step": event.step,
                      "tensor": event.tensor, "kind": event.kind, "also": event.also})  # fmt: skip
    if fresh:
        session.execute(insert_ignoring_duplicates(session, _NONFINITE), fresh)


def _scalar_rows(batch: wire.Batch, run_id: str) -> list[Record]:
    rows: list[Record] = []
    for block in batch.scalars:
        n = len(block.steps)
        times: Iterable[float | None] = block.times or repeat(None, n)
        rows.extend(
            zip(
                repeat(run_id, n),
                repeat(block.name, n),
                block.steps,
                repeat(batch.rank, n),
                block.values,
                times,
                strict=False,
            )
        )
    return rows


def _describe_stat(
    tensor_ids: dict[tuple[str, str], int], what: str = "statistics"
) -> Callable[[Record], str]:
    names = {tensor_id: key for key, tensor_id in tensor_ids.items()}

    def describe(key: Record) -> str:
        name, kind = names[key[0]]
        return f"{what} of {kind} `{name}` at step {key[1]} (rank {key[2]})"

    return describe


def _insert_statement(session: Session, table: Table, columns: Sequence[str]) -> str:
    dialect = session.get_bind().dialect
    quote = dialect.identifier_preparer.quote
    marks = ", ".join([_PLACEHOLDERS[dialect.paramstyle]] * len(columns))
    return f"INSERT INTO {quote(table.name)} ({', '.join(map(quote, columns))}) VALUES ({marks})"


def _insert(
    session: Session,
    table: Table,
    columns: Sequence[str],
    rows: list[Record],
    describe: Callable[[Record], str],
) -> None:
    """Bulk insert; on a key that exists, keep equal rows and refuse different ones."""
    if not rows:
        return
    statement = _insert_statement(session, table, columns)
    try:
        with session.begin_nested():
            session.connection().exec_driver_sql(statement, rows)
        return
    except IntegrityError:
        pass
    key_at = [columns.index(c.name) for c in table.primary_key.columns]
    stored = _existing_rows(session, table, columns, key_at, rows)
    fresh: dict[Record, Record] = {}  # a key may also repeat within the batch
    for row in rows:
        key = tuple(row[i] for i in key_at)
        old = stored.get(key) or fresh.get(key)
        if old is None:
            fresh[key] = row
        elif not all(_same(new, was) for new, was in zip(row, old, strict=True)):
            where = "is already stored" if key in stored else "is given twice in the batch"
            raise Conflict(f"{describe(key)} {where} with different values")
    if fresh:
        session.connection().exec_driver_sql(statement, list(fresh.values()))


def _existing_rows(
    session: Session, table: Table, columns: Sequence[str], key_at: list[int], rows: list[Record]
) -> dict[Record, Record]:
    """Stored rows with the keys of ``rows``, by key, values in the order of ``columns``."""
    key_list = list({tuple(row[i] for i in key_at) for row in rows})
    key_columns = tuple_(*(table.c[columns[i]] for i in key_at))
    selected = [table.c[c] for c in columns]
    found: dict[Record, Record] = {}
    for start in range(0, len(key_list), 500):
        chunk = key_list[start : start + 500]
        for row in session.execute(select(*selected).where(key_columns.in_(chunk))):
            found[tuple(row[i] for i in key_at)] = tuple(row)
    return found


def _same(new: Any, old: Any) -> bool:
    """Equality where NaN equals NaN and SQLite's NULL stands for NaN."""
    if isinstance(new, float) and math.isnan(new):
        return old is None or (isinstance(old, float) and math.isnan(old))
    if new is None:
        return old is None
    return bool(new == old)
