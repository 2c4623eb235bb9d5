"""Measurements over steps as JSON: statistics, histograms, scalars."""

from __future__ import annotations

from fastapi import APIRouter

from layerwatch import wire
from layerwatch_server import store
from layerwatch_server.api.deps import SessionDep
from layerwatch_server.api.openapi import error_responses
from layerwatch_server.api.params import Limit, MaxPoints, PageLimit, Rank, RunId, Step, TensorName
from layerwatch_server.schemas import (
    HistogramsPublic,
    ScalarNamesPublic,
    ScalarSeriesPublic,
    SeriesPublic,
)

router = APIRouter(
    tags=["series"],
    responses=error_responses(
        404,
        422,
        503,
        not_found="`run_not_found`, `tensor_not_found` or `scalar_not_found`: "
        "no such run, or the run has no such tensor or scalar.",
    ),
)


@router.get("/runs/{run_id}/series", response_model=SeriesPublic)
def get_series(
    session: SessionDep,
    run_id: RunId,
    tensor: TensorName,
    kind: wire.Kind = "activation",
    stat: wire.StatName = "mean",
    rank: Rank = 0,
    start: Step = None,
    end: Step = None,
    after_step: Step = None,
    limit: Limit = 10_000,
    max_points: MaxPoints = None,
) -> SeriesPublic:
    """One statistic of one tensor over steps, paged or downsampled."""
    return store.get_series(
        session,
        run_id,
        tensor=tensor,
        kind=kind,
        stat=stat,
        rank=rank,
        start=start,
        end=end,
        after_step=after_step,
        limit=limit,
        max_points=max_points,
    )


@router.get("/runs/{run_id}/histograms", response_model=HistogramsPublic)
def get_histograms(
    session: SessionDep,
    run_id: RunId,
    tensor: TensorName,
    kind: wire.Kind = "activation",
    rank: Rank = 0,
    step: Step = None,
    start: Step = None,
    end: Step = None,
    after_step: Step = None,
    limit: PageLimit = 1000,
) -> HistogramsPublic:
    """Histograms of one tensor at one step, or over a step range."""
    return store.get_histograms(
        session,
        run_id,
        tensor=tensor,
        kind=kind,
        rank=rank,
        step=step,
        start=start,
        end=end,
        after_step=after_step,
        limit=limit,
    )


@router.get("/runs/{run_id}/scalars", response_model=ScalarNamesPublic)
def list_scalar_names(session: SessionDep, run_id: RunId) -> ScalarNamesPublic:
    """Names of the scalars a run has logged."""
    return store.list_scalar_names(session, run_id)


@router.get("/runs/{run_id}/scalars/series", response_model=ScalarSeriesPublic)
def get_scalar_series(
    session: SessionDep,
    run_id: RunId,
    name: TensorName,
    rank: Rank = 0,
    start: Step = None,
    end: Step = None,
    after_step: Step = None,
    limit: Limit = 10_000,
    max_points: MaxPoints = None,
) -> ScalarSeriesPublic:
    """One logged scalar over steps, paged or downsampled."""
    return store.get_scalar_series(
        session,
        run_id,
        name=name,
        rank=rank,
        start=start,
        end=end,
        after_step=after_step,
        limit=limit,
        max_points=max_points,
    )
