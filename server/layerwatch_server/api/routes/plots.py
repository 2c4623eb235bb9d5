"""Server-rendered PNG plots."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Path, Query, Request, Response

from layerwatch import wire
from layerwatch_server import store
from layerwatch_server.api.deps import SessionDep
from layerwatch_server.errors import InvalidQuery
from layerwatch_server.plots import Line, render_lines_png

router = APIRouter(tags=["plots"])

RunId = Annotated[str, Path(max_length=64)]
Names = Annotated[
    list[str], Query(min_length=1, max_length=32, description="Repeat to draw several.")
]
# Bounded like the stored columns: a larger int cannot even be bound on SQLite.
Step = Annotated[int | None, Query(ge=0, le=wire.MAX_INT64)]
Width = Annotated[int, Query(ge=200, le=4000, description="Image width in pixels.")]
Height = Annotated[int, Query(ge=150, le=4000, description="Image height in pixels.")]
Dpi = Annotated[int, Query(ge=50, le=300)]
MaxPoints = Annotated[int, Query(ge=4, le=20_000)]
PNG: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}, "description": "A PNG image."}
}


def _check_names(names: list[str]) -> None:
    for name in names:
        if not 0 < len(name) <= wire.MAX_NAME_LENGTH:
            raise InvalidQuery(f"name must be 1-{wire.MAX_NAME_LENGTH} characters")


async def _render(request: Request, render: Callable[[], bytes]) -> bytes:
    """Render in a worker thread, at most ``max_concurrent_renders`` at once."""
    limiter: anyio.CapacityLimiter = request.app.state.render_limiter
    return await anyio.to_thread.run_sync(render, limiter=limiter)


@router.get("/runs/{run_id}/plots/series.png", response_class=Response, responses=PNG)
async def plot_series(
    request: Request,
    session: SessionDep,
    run_id: RunId,
    tensor: Names,
    kind: wire.Kind = "activation",
    stat: wire.StatName = "mean",
    rank: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    start: Step = None,
    end: Step = None,
    logy: bool = False,
    max_points: MaxPoints = 2000,
    width: Width = 900,
    height: Height = 500,
    dpi: Dpi = 100,
) -> Response:
    """A statistic over steps for one or more tensors of a run."""
    _check_names(tensor)

    def query() -> list[Line]:
        lines = []
        for name in tensor:
            series = store.get_series(
                session,
                run_id,
                tensor=name,
                kind=kind,
                stat=stat,
                rank=rank,
                start=start,
                end=end,
                max_points=max_points,
            )
            lines.append(Line(name, series.steps, series.values))
        return lines

    lines = await anyio.to_thread.run_sync(query)
    png = await _render(
        request,
        partial(
            render_lines_png,
            lines,
            title=f"{kind} {stat}",
            ylabel=stat,
            logy=logy,
            width=width,
            height=height,
            dpi=dpi,
        ),
    )
    return Response(png, media_type="image/png")


@router.get("/runs/{run_id}/plots/scalars.png", response_class=Response, responses=PNG)
async def plot_scalars(
    request: Request,
    session: SessionDep,
    run_id: RunId,
    name: Names,
    start: Step = None,
    end: Step = None,
    logy: bool = False,
    max_points: MaxPoints = 2000,
    width: Width = 900,
    height: Height = 500,
    dpi: Dpi = 100,
) -> Response:
    """Logged scalars (loss, accuracy, ...) over steps."""
    _check_names(name)

    def query() -> list[Line]:
        lines = []
        for scalar in name:
            series = store.get_scalar_series(
                session, run_id, name=scalar, start=start, end=end, max_points=max_points
            )
            lines.append(Line(scalar, series.steps, series.values))
        return lines

    lines = await anyio.to_thread.run_sync(query)
    png = await _render(
        request,
        partial(
            render_lines_png,
            lines,
            title=", ".join(name),
            ylabel="value",
            logy=logy,
            width=width,
            height=height,
            dpi=dpi,
        ),
    )
    return Response(png, media_type="image/png")
