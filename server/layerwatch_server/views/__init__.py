"""The plot gallery: every view by name (see `base.View`)."""

from __future__ import annotations

from typing import Any

from layerwatch_server.views.attributions import ATTRIBUTIONS
from layerwatch_server.views.base import ImageParams, View, ViewData, ViewParams, render_png
from layerwatch_server.views.classes import CLASS_MEANS, CONFUSION
from layerwatch_server.views.embedding import EMBEDDING
from layerwatch_server.views.model import MODEL
from layerwatch_server.views.outputs import FEATURE_MAPS, LAYER_OUTPUTS
from layerwatch_server.views.scatter import SCATTER
from layerwatch_server.views.series import SCALARS, SERIES

_GALLERY = (SERIES, SCALARS, SCATTER, EMBEDDING, CLASS_MEANS, CONFUSION, LAYER_OUTPUTS,
            FEATURE_MAPS, ATTRIBUTIONS, MODEL)  # fmt: skip
VIEWS: dict[str, View[Any, Any]] = {view.name: view for view in _GALLERY}

__all__ = ["VIEWS", "ImageParams", "View", "ViewData", "ViewParams", "render_png"]
