"""Reading and writing the database: Session in, rows or models out; no HTTP here."""

from layerwatch_server.store.ingest import ingest_batch
from layerwatch_server.store.runs import (
    create_or_resume_run,
    get_run,
    list_projects,
    list_runs,
    list_tensors,
    update_run,
)
from layerwatch_server.store.series import (
    get_histograms,
    get_scalar_series,
    get_series,
    list_scalar_names,
)

__all__ = [
    "create_or_resume_run",
    "get_histograms",
    "get_run",
    "get_scalar_series",
    "get_series",
    "ingest_batch",
    "list_projects",
    "list_runs",
    "list_scalar_names",
    "list_tensors",
    "update_run",
]
