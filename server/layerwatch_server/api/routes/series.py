"""Measurements over steps as JSON: statistics, histograms, scalars."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel

from layerwatch import wire
from layerwatch_server import store
from layerwatch_server.api.deps import SessionDep
from layerwatch_server.api.openapi import error_responses
from layerwatch_server.api.params import Limit, MaxPoints, PageLimit, Rank, RunId, Step, TensorName
from layerwatch_server.schemas import (
    HistogramsPublic,
    HistogramStepsPublic,
    LatestScalarsPublic,
    ScalarNamesPublic,
    ScalarSeriesPublic,
    SeriesPublic,
)
from layerwatch_server.store.latest import latest_scalars


def _json(answer: BaseModel) -> Response:
    """``answer`` as JSON, serialized once: a long series is built without validation
    (these are stored numbers), and FastAPI would validate it again."""
    return Response(answer.model_dump_json(), media_type="application/json")


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
) -> Response:
    """One statistic of one tensor over steps, paged or downsampled."""
    series = store.get_series(
        session, run_id, tensor=tensor, kind=kind, stat=stat, rank=rank, start=start, end=end,
        after_step=after_step, limit=limit, max_points=max_points,
    )  # fmt: skip
    return _json(series)


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


@router.get("/runs/{run_id}/histograms/steps", response_model=HistogramStepsPublic)
def get_histogram_steps(
    session: SessionDep,
    run_id: RunId,
    tensor: TensorName,
    kind: wire.Kind = "activation",
    rank: Rank = 0,
    max_points: Annotated[
        int, Query(ge=2, le=100_000, description="Thin evenly to at most this many steps.")
    ] = 2000,
) -> HistogramStepsPublic:
    """The steps at which one tensor has a histogram: e.g. the stops of a step slider."""
    return store.get_histogram_steps(
        session, run_id, tensor=tensor, kind=kind, rank=rank, max_points=max_points
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
) -> Response:
    """One logged scalar over steps, paged or downsampled."""
    series = store.get_scalar_series(
        session, run_id, name=name, rank=rank, start=start, end=end, after_step=after_step,
        limit=limit, max_points=max_points,
    )  # fmt: skip
    return _json(series)


_RUN_IDS = Query(
    min_length=1,
    max_length=200,
    description="Run ids (repeat, up to 200): e.g. the page of runs a listing shows.",
)


@router.get("/scalars/latest", response_model=LatestScalarsPublic)
def get_latest_scalars(
    session: SessionDep,
    run: Annotated[list[Annotated[str, Query(max_length=64)]], _RUN_IDS],
    rank: Rank = 0,
) -> LatestScalarsPublic:
    """The newest value of every scalar of each run, and each run's newest step."""
    return latest_scalars(session, run, rank=rank)
