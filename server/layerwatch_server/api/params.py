"""Path and query parameters that several routes share, declared once.

Every integer has an upper bound, at most the 64-bit range of the databases'
columns (SQLite cannot even bind a larger one); a test walks the OpenAPI
document for integers without one.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

from layerwatch import wire
from layerwatch_server.downsample import MIN_POINTS

MAX_RANK = 2**31 - 1

RunId = Annotated[str, Path(max_length=64, description="The run's id.")]
TensorName = Annotated[str, Query(min_length=1, max_length=wire.MAX_NAME_LENGTH)]
Step = Annotated[int | None, Query(ge=0, le=wire.MAX_INT64)]
Rank = Annotated[int, Query(ge=0, le=MAX_RANK)]
AnyRank = Annotated[int | None, Query(ge=0, le=MAX_RANK)]
MaxPoints = Annotated[
    int | None,
    Query(ge=MIN_POINTS, le=100_000, description="Downsample to at most this many points."),
]
Limit = Annotated[int, Query(ge=1, le=100_000, description="Page size at full resolution.")]
PageLimit = Annotated[int, Query(ge=1, le=10_000)]
"""Page size of the endpoints whose rows are wide (histograms, unit means)."""
Offset = Annotated[int, Query(ge=0, le=wire.MAX_INT64, description="Runs to skip.")]
ListLimit = Annotated[int, Query(ge=1, le=1000)]
"""Page size of a listing of runs."""
