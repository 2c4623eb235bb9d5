"""Measurements over steps as JSON: statistics, histograms, scalars."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from layerwatch import wire
from layerwatch_server import store
from layerwatch_server.api.deps import SessionDep
from layerwatch_server.downsample import MIN_POINTS
from layerwatch_server.schemas import (
    HistogramsPublic,
    ScalarNamesPublic,
    ScalarSeriesPublic,
    SeriesPublic,
)

router = APIRouter(tags=["series"])

RunId = Annotated[str, Path(max_length=64)]
TensorName = Annotated[str, Query(min_length=1, max_length=wire.MAX_NAME_LENGTH)]
# Bounded like the stored columns: a larger int cannot even be bound on SQLite.
Step = Annotated[int | None, Query(ge=0, le=wire.MAX_INT64)]
Rank = Annotated[int, Query(ge=0, le=2**31 - 1)]
MaxPoints = Annotated[
    int | None,
    Query(ge=MIN_POINTS, le=100_000, description="Downsample to at most this many points."),
]
Limit = Annotated[int, Query(ge=1, le=100_000, description="Page size at full resolution.")]


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
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
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
