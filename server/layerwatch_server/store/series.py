"""Statistics and histograms of one tensor over steps, as JSON."""

from __future__ import annotations

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from layerwatch import wire
from layerwatch_server.models import SqlHistogram, SqlStat
from layerwatch_server.schemas import (
    HistogramPublic,
    HistogramsPublic,
    HistogramStepsPublic,
    SeriesPublic,
)
from layerwatch_server.store import codec
from layerwatch_server.store.envelopes import read_envelope
from layerwatch_server.store.paging import check_step_range, cut_page, page_by_step, read_series
from layerwatch_server.store.runs import require_tensor_id


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
    tensor_id = require_tensor_id(session, run_id, tensor, kind)
    if max_points is not None:
        check_step_range(start, end)
        begin = start if after_step is None else max(after_step + 1, start or 0)
        envelope = read_envelope(session, tensor_id, stat=stat, rank=rank, start=begin,
                                 end=end, max_points=max_points)  # fmt: skip
        if envelope is not None:
            return SeriesPublic(
                tensor=tensor, kind=kind, stat=stat, rank=rank, steps=envelope.steps,
                values=envelope.values, total=envelope.total,
                downsampled=envelope.total > len(envelope.steps), next_after_step=None,
            )  # fmt: skip
    query = select(SqlStat.step, getattr(SqlStat, stat).label("value")).where(
        SqlStat.tensor_id == tensor_id, SqlStat.rank == rank
    )
    page = read_series(session, query, SqlStat.step, start=start, end=end, after_step=after_step,
                       limit=limit, max_points=max_points)  # fmt: skip
    steps = [row[0] for row in page.rows]
    values = [row[1] for row in page.rows]
    # Built without validation: these are the database's own numbers, 10,000 a page
    return SeriesPublic.model_construct(
        tensor=tensor,
        kind=kind,
        stat=stat,
        rank=rank,
        steps=steps,
        values=codec.float_list(values),
        total=page.total,
        downsampled=page.downsampled,
        next_after_step=page.next_after_step,
    )


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
    tensor_id = require_tensor_id(session, run_id, tensor, kind)
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
    for row, histogram in zip(rows, codec.unpack_histograms(rows), strict=True):
        data.append(
            HistogramPublic(
                step=row.step,
                rank=row.rank,
                edges=histogram.edges.tolist(),
                counts=histogram.counts.tolist(),
                sample_size=row.sample_size,
            )
        )
    return HistogramsPublic(
        tensor=tensor, kind=kind, data=data, count=len(data), next_after_step=next_after
    )


def get_histogram_steps(
    session: Session,
    run_id: str,
    *,
    tensor: str,
    kind: wire.Kind,
    rank: int = 0,
    max_points: int = 2000,
) -> HistogramStepsPublic:
    """The steps that have a histogram of one tensor, thinned evenly to at most
    ``max_points`` (the first and last always kept): the stops of a step slider."""
    tensor_id = require_tensor_id(session, run_id, tensor, kind)
    steps = list(
        session.scalars(
            select(SqlHistogram.step)
            .where(SqlHistogram.tensor_id == tensor_id, SqlHistogram.rank == rank)
            .order_by(SqlHistogram.step)
        )
    )
    total = len(steps)
    if total > max_points:
        keep = np.unique(np.linspace(0, total - 1, max_points).round().astype(np.int64))
        steps = [steps[i] for i in keep]
    return HistogramStepsPublic(
        tensor=tensor,
        kind=kind,
        rank=rank,
        steps=steps,
        total=total,
        downsampled=total > len(steps),
    )
