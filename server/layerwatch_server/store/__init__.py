"""Reading and writing the database: Session in, rows or models out; no HTTP here."""

from layerwatch_server.store.embeddings import EmbeddingKey, get_embedding, save_embedding
from layerwatch_server.store.ingest import ingest_batch
from layerwatch_server.store.layers import get_model_trees, get_unit_means, get_weight_changes
from layerwatch_server.store.probes import get_probe, ingest_probe, left_out_because, list_probes
from layerwatch_server.store.runs import (
    create_or_resume_run,
    data_version,
    get_run,
    heartbeat,
    list_projects,
    list_runs,
    list_tensors,
    update_run,
)
from layerwatch_server.store.scalars import get_scalar_series, list_scalar_names
from layerwatch_server.store.series import get_histogram_steps, get_histograms, get_series

__all__ = [
    "EmbeddingKey",
    "create_or_resume_run",
    "data_version",
    "get_embedding",
    "get_histogram_steps",
    "get_histograms",
    "get_model_trees",
    "get_probe",
    "get_run",
    "get_scalar_series",
    "get_series",
    "get_unit_means",
    "get_weight_changes",
    "heartbeat",
    "ingest_batch",
    "ingest_probe",
    "left_out_because",
    "list_probes",
    "list_projects",
    "list_runs",
    "list_scalar_names",
    "list_tensors",
    "save_embedding",
    "update_run",
]
