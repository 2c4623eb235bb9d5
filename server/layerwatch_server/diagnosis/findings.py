"""What a detector reports: `Finding`, its kinds and severities, and the view links."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args
from urllib.parse import urlencode

import numpy as np
import numpy.typing as npt

from layerwatch_server.schemas import EvidenceValue, Severity
from layerwatch_server.schemas import FindingKind as Kind

TensorKind = Literal["activation", "weight", "grad"]

KINDS: tuple[Kind, ...] = get_args(Kind)
SEVERITY_ORDER: dict[Severity, int] = {"error": 0, "warning": 1, "info": 2}
Evidence = dict[str, EvidenceValue]


@dataclass(frozen=True)
class Finding:
    """One thing wrong with a run: what, where (tensor or scalar), when, how sure."""

    kind: Kind
    step: int
    severity: Severity
    confidence: float
    message: str
    view: str
    tensor: str | None = None
    tensor_kind: TensorKind | None = None
    scalar: str | None = None
    last_step: int | None = None
    evidence: Evidence = field(default_factory=dict)


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """Errors first, then warnings, then infos; each by step, then kind and tensor."""
    return sorted(
        findings,
        key=lambda f: (SEVERITY_ORDER[f.severity], f.step, f.kind, f.tensor or f.scalar or ""),
    )


def view_url(run_id: str, view: str, **params: str | int | list[str]) -> str:
    """The relative URL of a gallery PNG with ``params`` (lists repeat the parameter)."""
    query = urlencode(params, doseq=True)
    return f"/api/v1/runs/{run_id}/plots/{view}.png" + (f"?{query}" if query else "")


LASTING = 0.8
"""Share of the later captures at which a condition must still hold to count as lasting:
one good capture does not end a problem, one bad one does not start it."""


def first_lasting(mask: Sequence[bool] | npt.NDArray[np.bool_]) -> int | None:
    """The first index where ``mask`` holds and keeps holding at `LASTING` of what follows."""
    flags = np.asarray(mask, dtype=bool)
    if not flags.any():
        return None
    # share of True from each index to the end
    tail = np.cumsum(flags[::-1])[::-1] / np.arange(len(flags), 0, -1)
    hits = np.flatnonzero(flags & (tail >= LASTING))
    return int(hits[0]) if hits.size else None
