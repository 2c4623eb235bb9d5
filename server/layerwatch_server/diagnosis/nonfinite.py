"""NaN and infinities: where each incident began, and what it spread to."""

from __future__ import annotations

import numpy as np

from layerwatch_server.diagnosis.findings import Finding, view_url
from layerwatch_server.diagnosis.loader import RunData, SentinelEvent, TensorInfo

_STAGE = {"activation": 0, "grad": 1, "weight": 2}
"""Order of computation within a step: the forward pass, backward pass, then the update."""
MAX_SPREAD = 50
"""Tensors named in a finding's evidence; the count says how many there were."""


def _computation_order(data: RunData) -> list[TensorInfo]:
    """Tensors in the order a step computes them: activations forward, gradients backward
    (the output layer's first), weights last."""
    order = {name: i for i, name in enumerate(data.parameter_order())}
    activations = data.of_kind("activation")
    grads = sorted(data.of_kind("grad"), key=lambda t: -order.get(t.name, -1))
    weights = sorted(data.of_kind("weight"), key=lambda t: order.get(t.name, len(order)))
    return [*activations, *grads, *weights]


def _incidents(bad_steps: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) column of each stretch of captures with a non-finite value."""
    stretches: list[tuple[int, int]] = []
    for column in np.flatnonzero(bad_steps):
        if stretches and stretches[-1][1] == column - 1:
            stretches[-1] = (stretches[-1][0], int(column))
        else:
            stretches.append((int(column), int(column)))
    return stretches


def _finding(data: RunData, step: int, last: int, origin: str, kind: str, spread: list[str],
             *, exact: bool, sentinel: bool) -> Finding:  # fmt: skip
    what = {"activation": "output", "grad": "gradient", "weight": "weights"}.get(kind, kind)
    return Finding(
        kind="nonfinite", step=step, last_step=last, severity="error",
        confidence=1.0 if exact else 0.8, tensor=origin,
        tensor_kind=kind if kind in _STAGE else None,  # type: ignore[arg-type]
        message=f"NaN or infinite values first appeared in the {what} of `{origin}` at step "
        f"{step}" + (f" and spread to {len(spread)} more tensors." if spread else "."),
        evidence={"spread_to": spread[:MAX_SPREAD], "spread_count": len(spread),
                  "from_sentinel": sentinel, "exact_step": exact},
        view=view_url(data.run_id, "series", tensor=[origin], kind=kind if kind in _STAGE
                      else "activation", stat="nonfinite"),
    )  # fmt: skip


def detect_nonfinite(data: RunData, events: list[SentinelEvent] | None = None) -> list[Finding]:
    """One finding per incident, named by its origin: the first tensor in computation
    order at the incident's first captured step. The earliest sentinel event, when the
    client reported one, is the first incident's origin at its exact step."""
    tensors = _computation_order(data)
    rows = [t.row for t in tensors]
    counts = data.stats["nonfinite"][rows]  # (tensors, steps), NaN where not captured
    bad = np.nan_to_num(counts, nan=0.0) > 0
    findings: list[Finding] = []
    for first, last in _incidents(np.asarray(bad.any(axis=0))):
        origin = tensors[int(np.flatnonzero(bad[:, first])[0])]
        hits = np.asarray(bad[:, first : last + 1].any(axis=1), dtype=bool).tolist()
        spread = [t.name if t.kind == "activation" else f"{t.kind}:{t.name}"
                  for t, hit in zip(tensors, hits, strict=True)
                  if hit and t is not origin]  # fmt: skip
        # the capture before tells whether this is the exact step
        exact = first == 0 or data.steps[first - 1] == data.steps[first] - 1
        findings.append(_finding(data, data.steps[first], data.steps[last], origin.name,
                                 origin.kind, spread, exact=exact,
                                 sentinel=False))  # fmt: skip
    if events:
        earliest = min(events, key=lambda e: e.step)
        if not findings or earliest.step <= findings[0].step:
            last = findings[0].last_step or earliest.step if findings else earliest.step
            later = findings[0].evidence["spread_to"] if findings else []
            seen = [
                *earliest.also,
                *([findings[0].tensor] if findings else []),
                *(later if isinstance(later, list) else []),
            ]
            spread = [str(n) for n in dict.fromkeys(seen) if n != earliest.tensor]
            sentinel = _finding(data, earliest.step, last, earliest.tensor,
                                earliest.kind, spread, exact=True, sentinel=True)  # fmt: skip
            findings = [sentinel, *findings[1:]]
    return findings
