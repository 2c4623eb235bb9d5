"""The plot gallery: every view by name (see `base.View`)."""

from __future__ import annotations

from typing import Any

from layerwatch_server.views.base import ImageParams, View, ViewData, ViewParams, render_png
from layerwatch_server.views.classes import CLASS_MEANS, CONFUSION
from layerwatch_server.views.embedding import EMBEDDING
from layerwatch_server.views.scatter import SCATTER
from layerwatch_server.views.series import SCALARS, SERIES

VIEWS: dict[str, View[Any, Any]] = {
    view.name: view for view in (SERIES, SCALARS, SCATTER, EMBEDDING, CLASS_MEANS, CONFUSION)
}

__all__ = ["VIEWS", "ImageParams", "View", "ViewData", "ViewParams", "render_png"]
