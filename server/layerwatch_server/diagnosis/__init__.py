"""Automatic diagnosis of a run from its stored data: findings of what is wrong, where,
since when and how sure, each with the gallery view that shows it.

loader (one read of the store per request), findings (the model), one module per
family of detectors (gradients, nonfinite, parameters, activations, losses), and
diagnose (all of them, cached per data version).
"""

from layerwatch_server.diagnosis.diagnose import FindingsCache, find_problems
from layerwatch_server.diagnosis.findings import KINDS, Finding
from layerwatch_server.diagnosis.loader import RunData, SentinelEvent, load_run_data

__all__ = [
    "KINDS",
    "Finding",
    "FindingsCache",
    "RunData",
    "SentinelEvent",
    "find_problems",
    "load_run_data",
]
