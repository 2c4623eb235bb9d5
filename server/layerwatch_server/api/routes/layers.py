"""Per-layer records as JSON: the newest of each, unit means, weight changes, the model tree."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from layerwatch import wire
from layerwatch_server import store
from layerwatch_server.api.deps import SessionDep
from layerwatch_server.api.openapi import error_responses
from layerwatch_server.api.params import AnyRank, Limit, PageLimit, Rank, RunId, Step, TensorName
from layerwatch_server.schemas import (
    LayersLatestPublic,
    ModelTreesPublic,
    UnitMeansPublic,
    WeightChangesPublic,
)
from layerwatch_server.store.latest import latest_layers

router = APIRouter(
    tags=["layers"],
    responses=error_responses(
        404,
        422,
        503,
        not_found="`run_not_found` or `tensor_not_found`: no such run, or the "
        "run has no such tensor.",
    ),
)


@router.get("/runs/{run_id}/layers/latest", response_model=LayersLatestPublic)
def get_latest_layers(
    session: SessionDep,
    run_id: RunId,
    rank: Rank = 0,
    trend: Annotated[int, Query(ge=0, le=1000, description="Recent values per tensor.")] = 50,
) -> LayersLatestPublic:
    """Every tensor in network order with its newest statistics and recent trend, in one
    request: the layer table of a dashboard."""
    return latest_layers(session, run_id, rank=rank, trend=trend)


@router.get("/runs/{run_id}/unit-means", response_model=UnitMeansPublic)
def get_unit_means(
    session: SessionDep,
    run_id: RunId,
    tensor: TensorName,
    kind: wire.Kind = "activation",
    rank: Rank = 0,
    start: Step = None,
    end: Step = None,
    after_step: Step = None,
    limit: PageLimit = 1000,
) -> UnitMeansPublic:
    """Per-unit means of one activation over steps (one row of units per step), paged."""
    return store.get_unit_means(
        session, run_id, tensor=tensor, kind=kind, rank=rank, start=start, end=end,
        after_step=after_step, limit=limit,
    )  # fmt: skip


@router.get("/runs/{run_id}/weight-changes", response_model=WeightChangesPublic)
def get_weight_changes(
    session: SessionDep,
    run_id: RunId,
    tensor: TensorName,
    rank: Rank = 0,
    start: Step = None,
    end: Step = None,
    after_step: Step = None,
    limit: Limit = 10_000,
) -> WeightChangesPublic:
    """Relative change of one weight since the previous capture and since the start, paged."""
    return store.get_weight_changes(
        session, run_id, tensor=tensor, rank=rank, start=start, end=end,
        after_step=after_step, limit=limit,
    )  # fmt: skip


@router.get("/runs/{run_id}/model", response_model=ModelTreesPublic)
def get_model_trees(
    session: SessionDep,
    run_id: RunId,
    rank: AnyRank = None,
) -> ModelTreesPublic:
    """The module tree of each watched model: paths, types, parameter counts, shapes."""
    return store.get_model_trees(session, run_id, rank=rank)
