"""Run every detector on a run's stored data; cache the findings per data version."""

from __future__ import annotations

import threading
from collections import OrderedDict

from sqlalchemy.orm import Session

from layerwatch_server.diagnosis.activations import detect_dead_units, detect_saturation
from layerwatch_server.diagnosis.findings import Finding, sort_findings
from layerwatch_server.diagnosis.gradients import (
    detect_exploding_gradients,
    detect_vanishing_gradients,
)
from layerwatch_server.diagnosis.loader import RunData, load_run_data
from layerwatch_server.diagnosis.losses import detect_losses
from layerwatch_server.diagnosis.nonfinite import detect_nonfinite
from layerwatch_server.diagnosis.parameters import detect_not_updating, detect_update_ratio
from layerwatch_server.store.runs import data_version

CACHED_RUNS = 256
"""Runs whose findings are kept; the least recently asked for goes first."""


def find_problems(data: RunData) -> list[Finding]:
    """Every detector's findings on ``data``, errors first, then by step."""
    findings = [
        *detect_nonfinite(data, data.sentinel_events),
        *detect_losses(data),
        *detect_exploding_gradients(data),
        *detect_vanishing_gradients(data),
        *detect_dead_units(data),
        *detect_saturation(data),
        *detect_not_updating(data),
        *detect_update_ratio(data),
    ]
    return sort_findings(findings)


class FindingsCache:
    """Findings per run, valid while the run's data version (the views' ETag) stands."""

    def __init__(self, size: int = CACHED_RUNS) -> None:
        self._size = size
        self._entries: OrderedDict[str, tuple[tuple[str, str], list[Finding]]] = OrderedDict()
        self._lock = threading.Lock()

    def diagnose(self, session: Session, run_id: str) -> list[Finding]:
        """The run's findings: cached while no new data arrived; raises for an unknown run."""
        version = data_version(session, run_id)
        with self._lock:
            entry = self._entries.get(run_id)
            if entry is not None and entry[0] == version:
                self._entries.move_to_end(run_id)
                return entry[1]
        findings = find_problems(load_run_data(session, run_id))
        with self._lock:
            self._entries[run_id] = (version, findings)
            self._entries.move_to_end(run_id)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return findings
