"""The plot gallery: every view by name (see `base.View`)."""

from __future__ import annotations

from typing import Any

from layerwatch_server.views.base import ImageParams, View, ViewData, ViewParams, render_png
from layerwatch_server.views.distributions import DISTRIBUTIONS
from layerwatch_server.views.gradients import GRADIENT_FLOW
from layerwatch_server.views.histogram import HISTOGRAM
from layerwatch_server.views.series import SCALARS, SERIES
from layerwatch_server.views.units import DEAD_UNITS
from layerwatch_server.views.weights import WEIGHT_CHANGE

VIEWS: dict[str, View[Any, Any]] = {
    view.name: view
    for view in (
        SERIES,
        SCALARS,
        DISTRIBUTIONS,
        HISTOGRAM,
        GRADIENT_FLOW,
        WEIGHT_CHANGE,
        DEAD_UNITS,
    )
}

__all__ = ["VIEWS", "ImageParams", "View", "ViewData", "ViewParams", "render_png"]
