"""The plot gallery: every view by name (see `base.View`), in the order the docs list them."""

from __future__ import annotations

from typing import Any

from layerwatch_server.views.attributions import ATTRIBUTIONS
from layerwatch_server.views.base import ImageParams, View, ViewData, ViewParams, render_png
from layerwatch_server.views.classes import CLASS_MEANS, CONFUSION
from layerwatch_server.views.distributions import DISTRIBUTIONS
from layerwatch_server.views.embedding import EMBEDDING
from layerwatch_server.views.gradients import GRADIENT_FLOW
from layerwatch_server.views.histogram import HISTOGRAM
from layerwatch_server.views.model import MODEL
from layerwatch_server.views.outputs import FEATURE_MAPS, LAYER_OUTPUTS
from layerwatch_server.views.scatter import SCATTER
from layerwatch_server.views.series import SCALARS, SERIES
from layerwatch_server.views.units import DEAD_UNITS
from layerwatch_server.views.weights import WEIGHT_CHANGE

_GALLERY = (SERIES, SCALARS, DISTRIBUTIONS, HISTOGRAM, GRADIENT_FLOW, WEIGHT_CHANGE, DEAD_UNITS,
            SCATTER, EMBEDDING, CLASS_MEANS, LAYER_OUTPUTS, FEATURE_MAPS, CONFUSION,
            ATTRIBUTIONS, MODEL)  # fmt: skip
VIEWS: dict[str, View[Any, Any]] = {view.name: view for view in _GALLERY}

__all__ = ["VIEWS", "ImageParams", "View", "ViewData", "ViewParams", "render_png"]
