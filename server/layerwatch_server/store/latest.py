"""The newest value of everything a run measures: what a dashboard shows first.

Each lookup is one index seek per tensor or scalar (`ORDER BY step DESC LIMIT n`
on a primary key that starts with the tensor or the run and name), so the cost
grows with the number of layers, never with the number of steps.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from layerwatch import wire
from layerwatch_server.models import SqlScalar, SqlStat, SqlTensor, SqlWeightChange
from layerwatch_server.schemas import (
    LatestScalar,
    LatestScalarsPublic,
    LayerLatest,
    LayersLatestPublic,
    RunLatestScalars,
)
from layerwatch_server.store.runs import require_run
from layerwatch_server.store.scalars import require_scalars

TREND_STAT: dict[str, wire.StatName] = {"activation": "mean", "weight": "std", "grad": "l2"}
"""The statistic a layer's sparkline follows, by kind of tensor."""


def latest_layers(
    session: Session, run_id: str, *, rank: int = 0, trend: int = 50
) -> LayersLatestPublic:
    """Every tensor of the run in network order, with its newest statistics, its newest
    update ratio (weights) and the last `trend` values of its `TREND_STAT`."""
    require_run(session, run_id)
    tensors = session.scalars(
        select(SqlTensor).where(SqlTensor.run_id == run_id).order_by(SqlTensor.id)
    ).all()
    layers = []
    for tensor in tensors:
        rows = session.scalars(
            select(SqlStat)
            .where(SqlStat.tensor_id == tensor.id, SqlStat.rank == rank)
            .order_by(SqlStat.step.desc())
            .limit(trend)
        ).all()
        ratio = None
        if tensor.kind == "weight":
            ratio = session.scalar(
                select(SqlWeightChange.update_ratio)
                .where(SqlWeightChange.tensor_id == tensor.id, SqlWeightChange.rank == rank)
                .order_by(SqlWeightChange.step.desc())
                .limit(1)
            )
        stat = TREND_STAT[tensor.kind]
        newest = rows[0] if rows else None
        layers.append(
            LayerLatest(
                name=tensor.name,
                kind=tensor.kind,
                module_type=tensor.module_type,
                shape=tensor.shape,
                step=None if newest is None else newest.step,
                stats={}
                if newest is None
                else {name: getattr(newest, name) for name in wire.STAT_NAMES},
                update_ratio=ratio,
                trend_stat=stat,
                trend_steps=[row.step for row in reversed(rows)],
                trend=[getattr(row, stat) for row in reversed(rows)],
            )
        )
    return LayersLatestPublic(run_id=run_id, rank=rank, data=layers, count=len(layers))


def latest_scalars(
    session: Session, run_ids: Sequence[str], *, rank: int = 0
) -> LatestScalarsPublic:
    """The newest value of every scalar of each run, and the run's newest step."""
    runs = []
    for run_id in dict.fromkeys(run_ids):
        values = {}
        for name in require_scalars(session, run_id):
            row = session.execute(
                select(SqlScalar.step, SqlScalar.value)
                .where(SqlScalar.run_id == run_id, SqlScalar.name == name, SqlScalar.rank == rank)
                .order_by(SqlScalar.step.desc())
                .limit(1)
            ).first()
            if row is not None:
                values[name] = LatestScalar(step=row.step, value=row.value)
        last = max((value.step for value in values.values()), default=None)
        runs.append(RunLatestScalars(run_id=run_id, last_step=last, scalars=values))
    return LatestScalarsPublic(data=runs, count=len(runs))
