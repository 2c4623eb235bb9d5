"""Per-layer records besides statistics: unit means, weight changes and the model tree."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from layerwatch import wire
from layerwatch_server.models import SqlModule, SqlUnitMean, SqlWeightChange
from layerwatch_server.schemas import (
    ModelTreePublic,
    ModelTreesPublic,
    ModulePublic,
    UnitMeansPublic,
    WeightChangesPublic,
)
from layerwatch_server.store import codec
from layerwatch_server.store.paging import cut_page, page_by_step
from layerwatch_server.store.runs import require_run, require_tensor_id


def get_unit_means(
    session: Session,
    run_id: str,
    *,
    tensor: str,
    kind: wire.Kind = "activation",
    rank: int = 0,
    start: int | None = None,
    end: int | None = None,
    after_step: int | None = None,
    limit: int = 1000,
) -> UnitMeansPublic:
    """Per-unit means of one tensor over a page of steps, one row of units per step."""
    tensor_id = require_tensor_id(session, run_id, tensor, kind)
    query = select(SqlUnitMean.step, SqlUnitMean.means).where(
        SqlUnitMean.tensor_id == tensor_id, SqlUnitMean.rank == rank
    )
    query = page_by_step(
        query, SqlUnitMean.step, start=start, end=end, after_step=after_step, limit=limit
    )
    rows, next_after = cut_page(list(session.execute(query)), limit, lambda row: row.step)
    values = [codec.unpack_unit_means(row.means).tolist() for row in rows]
    return UnitMeansPublic(
        tensor=tensor,
        kind=kind,
        rank=rank,
        units=len(values[0]) if values else 0,
        steps=[row.step for row in rows],
        values=values,
        next_after_step=next_after,
    )


def get_weight_changes(
    session: Session,
    run_id: str,
    *,
    tensor: str,
    rank: int = 0,
    start: int | None = None,
    end: int | None = None,
    after_step: int | None = None,
    limit: int = 10_000,
) -> WeightChangesPublic:
    """Relative change since the previous capture and since the start, and update ratios."""
    tensor_id = require_tensor_id(session, run_id, tensor, "weight")
    change = SqlWeightChange
    query = select(change.step, change.since_prev, change.since_init, change.update_ratio).where(
        change.tensor_id == tensor_id, change.rank == rank
    )
    query = page_by_step(
        query, change.step, start=start, end=end, after_step=after_step, limit=limit
    )
    rows, next_after = cut_page(list(session.execute(query)), limit, lambda row: row.step)
    return WeightChangesPublic(
        tensor=tensor,
        rank=rank,
        steps=[row.step for row in rows],
        since_prev=codec.float_list([row.since_prev for row in rows]),
        since_init=codec.float_list([row.since_init for row in rows]),
        update_ratio=codec.float_list([row.update_ratio for row in rows]),
        next_after_step=next_after,
    )


def get_model_trees(session: Session, run_id: str, *, rank: int | None = None) -> ModelTreesPublic:
    """The module trees of the models a run watched, per rank, in `named_modules()` order."""
    require_run(session, run_id)
    query = select(SqlModule).where(SqlModule.run_id == run_id)
    if rank is not None:
        query = query.where(SqlModule.rank == rank)
    trees: dict[tuple[int, str], list[SqlModule]] = {}
    for module in session.scalars(
        query.order_by(SqlModule.rank, SqlModule.model, SqlModule.position)
    ):
        trees.setdefault((module.rank, module.model), []).append(module)
    data = [
        ModelTreePublic(
            name=model,
            rank=tree_rank,
            params=sum(m.params for m in modules),
            modules=[ModulePublic.model_validate(m) for m in modules],
        )
        for (tree_rank, model), modules in trees.items()
    ]
    return ModelTreesPublic(data=data, count=len(data))
