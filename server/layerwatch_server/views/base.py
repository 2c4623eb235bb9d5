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
from typing import Annotated, Any, Generic, TypeVar

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, model_validator
from pydantic.json_schema import JsonSchemaValue
from sqlalchemy.orm import Session

from layerwatch_server.schemas import JsonAnswer

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


def pair_of(item: JsonSchemaValue) -> WithJsonSchema:
    """The schema of a 2-tuple as an array of two ``item`` s: the same JSON, without the
    `prefixItems` that some OpenAPI tools (Schemathesis 4) cannot read in an answer."""
    return WithJsonSchema({"type": "array", "items": item, "minItems": 2, "maxItems": 2})


StrPair = Annotated[tuple[str, str], pair_of({"type": "string"})]
FloatPair = Annotated[tuple[float, float], pair_of({"type": "number"})]


class Part(JsonAnswer):
    """A nested part of a JSON twin: NaN and infinities as strings, like `ViewData`'s own."""


class ViewData(JsonAnswer):
    """Base of a view's JSON twin: the numbers behind the image."""

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


def draw_figure(view: View[Any, Any], data: ViewData, image: ImageParams) -> Figure:
    """`data` drawn with `view` on a new figure of `image`'s size, on an Agg canvas."""
    figure = Figure(
        figsize=(image.width / image.dpi, image.height / image.dpi),
        dpi=image.dpi,
        layout="constrained",
    )
    FigureCanvasAgg(figure)
    view.draw(figure, data)
    fit_text(figure)
    return figure


def render_png(view: View[Any, Any], data: ViewData, image: ImageParams) -> bytes:
    """Draw `data` with `view` on a new figure of `image`'s size; PNG bytes."""
    figure = draw_figure(view, data, image)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def no_data(axes: Axes, message: str = "no data") -> None:
    """Say so in the middle of empty axes."""
    axes.text(0.5, 0.5, message, ha="center", va="center", transform=axes.transAxes)
    axes.set_xticks([])
    axes.set_yticks([])


def show_no_data(figure: Figure, title: str, notes: list[str]) -> None:
    """A "no data" image: the title, and the first note (why) under it, wrapped."""
    axes: Axes = figure.add_subplot()
    no_data(axes)
    axes.set_title(title)
    if notes:
        why = axes.text(0.5, 0.35, notes[0], ha="center", va="top", wrap=True,
                        transform=axes.transAxes, fontsize="small")  # fmt: skip
        why.set_in_layout(False)  # a long line must not squeeze the axes away


def fit_text(figure: Figure, width_pts: float = 640.0, height_pts: float = 360.0) -> None:
    """Shrink the texts of a figure smaller than `width_pts` x `height_pts` in proportion.

    Fonts and pads are in points: in a small image (or at a high dpi) titles and
    labels would leave the constrained layout no room, and it gives up with a
    warning. Below a third of that size the layout is dropped altogether. Done
    once per figure (`render_png` calls it after drawing; a view may call it
    earlier, e.g. before sizing a table to the text).
    """
    if getattr(figure, "_layerwatch_text_fitted", False):
        return
    figure._layerwatch_text_fitted = True  # type: ignore[attr-defined]
    width, height = figure.get_size_inches() * 72
    scale = min(1.0, width / width_pts, height / height_pts)
    if scale >= 1.0:
        return
    for text in figure.findobj(Text):
        text.set_fontsize(max(1.0, text.get_fontsize() * scale))
    for axes in figure.axes:
        axes.tick_params(length=3.5 * scale, pad=3.5 * scale)
        for axis in (axes.xaxis, axes.yaxis):
            axis.labelpad *= scale
    if scale < 1 / 3:
        figure.set_layout_engine("none")
