"""What a view is: query parameters, a computation to JSON, and a drawing of it.

Each view of the gallery (``GET /runs/{run_id}/plots/<view>.png`` and its JSON
twin ``<view>.json``) is one `View`: a pydantic model of its query parameters,
a `compute` that reads the database into a `ViewData` (exactly the numbers the
image shows), and a `draw` that puts that data on a matplotlib `Figure`. The
routes, caching, the render limit and the image size live in one place
(``api/routes/views.py``); a view only knows its data.

Drawing uses matplotlib's object API on the Agg canvas only: pyplot keeps
global state that leaks figures in a long-lived server and is not thread-safe.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy.orm import Session

MAX_PIXELS = 16_000_000
"""Largest image (width x height) a view renders."""


class ViewParams(BaseModel):
    """Base of a view's query parameters: unknown parameters are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageParams(ViewParams):
    """Size of the PNG; only the image takes them, the JSON twin does not."""

    width: int = Field(900, ge=200, le=6000, description="Image width in pixels.")
    height: int = Field(500, ge=150, le=6000, description="Image height in pixels.")
    dpi: int = Field(100, ge=50, le=300, description="Dots per inch: text and line scale.")

    @model_validator(mode="after")
    def _bounded(self) -> ImageParams:
        if self.width * self.height > MAX_PIXELS:
            raise ValueError(f"width x height must be at most {MAX_PIXELS} pixels")
        return self


class ViewData(BaseModel):
    """Base of a view's JSON twin: the numbers behind the image."""

    model_config = ConfigDict(ser_json_inf_nan="strings")

    view: str
    run_id: str
    title: str
    downsampled: bool = Field(
        False, description="True when some data was thinned or capped to draw it."
    )
    notes: list[str] = Field(
        default_factory=list, description="What a reader should know: left-out values, caps."
    )


P = TypeVar("P", bound=ViewParams)
D = TypeVar("D", bound=ViewData)


@dataclass(frozen=True)
class View(Generic[P, D]):
    """One plot of the gallery."""

    name: str
    summary: str
    params: type[P]
    data: type[D]
    compute: Callable[[Session, str, P], D]
    draw: Callable[[Figure, D], None]


def render_png(view: View[Any, Any], data: ViewData, image: ImageParams) -> bytes:
    """Draw `data` with `view` on a new figure of `image`'s size; PNG bytes."""
    figure = Figure(
        figsize=(image.width / image.dpi, image.height / image.dpi),
        dpi=image.dpi,
        layout="constrained",
    )
    FigureCanvasAgg(figure)
    view.draw(figure, data)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def no_data(axes: Axes, message: str = "no data") -> None:
    """Say so in the middle of empty axes."""
    axes.text(0.5, 0.5, message, ha="center", va="center", transform=axes.transAxes)
    axes.set_xticks([])
    axes.set_yticks([])
