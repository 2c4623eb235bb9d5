"""Logged losses (scalars named like ``loss``): divergence, oscillation, slow convergence."""

from __future__ import annotations

import numpy as np

from layerwatch_server.diagnosis.findings import Finding, first_lasting, view_url
from layerwatch_server.diagnosis.loader import RunData

DIVERGENCE_FACTOR = 1e2
"""A loss 100x its starting level has diverged: training lowers a loss, it never multiplies it."""
MIN_POINTS = 20
"""Values a loss needs before its trend is judged: fewer are mostly noise."""
WINDOWS = 5
"""A loss's trend is judged over this many equal windows of its values."""
START_POINTS = 1
"""The starting level of a loss is its first value, before any update could move it (a
too-high learning rate changes it at once)."""
NO_PROGRESS = 0.9
"""A window whose median is still above this share of the starting level made no progress."""
SWING = 0.5
"""Oscillating: the spread (90th - 10th percentile) of such a window reaches half its median."""
FLAT = 0.05
"""Flat: that spread stays under 5% of its median (noise, no movement)."""


def _growth_start(values: np.ndarray) -> tuple[int, float] | None:
    """(index, starting level) where a loss first reaches `DIVERGENCE_FACTOR` times its
    starting level and stays there (non-finite values count as there)."""
    head = values[: max(3, values.size // 20)]
    head = head[np.isfinite(head)]
    if head.size < 3 or float(np.median(head)) <= 0:
        return None
    baseline = float(np.median(head))
    with np.errstate(invalid="ignore"):
        high = ~np.isfinite(values) | (values >= DIVERGENCE_FACTOR * baseline)
    start = first_lasting(high)
    return None if start is None else (start, baseline)


def _divergence(data: RunData, name: str, steps: np.ndarray, values: np.ndarray) -> Finding | None:
    view = view_url(data.run_id, "scalars", name=[name], logy="true")
    bad = np.flatnonzero(~np.isfinite(values))
    growth = _growth_start(values)
    if growth is not None and (not bad.size or growth[0] < bad[0]):
        start, baseline = growth
        finite = values[start:][np.isfinite(values[start:])]
        step, peak = int(steps[start]), float(finite.max()) if finite.size else baseline
        return Finding(
            kind="loss_divergence", step=step, last_step=int(steps[-1]), severity="error",
            confidence=0.9, scalar=name, view=view,
            message=f"The loss `{name}` diverged at step {step}: it grew to {peak / baseline:.0e} "
            f"times its starting level" + (" and then to NaN or infinity" if bad.size else "")
            + "; lower the learning rate.",
            evidence={"baseline": baseline, "peak": peak, "factor": DIVERGENCE_FACTOR,
                      "nonfinite_step": int(steps[bad[0]]) if bad.size else None},
        )  # fmt: skip
    if bad.size:
        step = int(steps[bad[0]])
        return Finding(
            kind="loss_divergence", step=step, last_step=int(steps[-1]), severity="error",
            confidence=1.0, scalar=name, view=view,
            message=f"The loss `{name}` became NaN or infinite at step {step}.",
            evidence={"value": str(values[bad[0]]), "nonfinite_points": int(bad.size),
                      "nonfinite_step": step},
        )  # fmt: skip
    return None


def _trend(data: RunData, name: str, steps: np.ndarray, values: np.ndarray) -> Finding | None:
    if values.size < MIN_POINTS or not np.isfinite(values).all():
        return None
    parts = np.array_split(np.arange(values.size), WINDOWS)
    level0 = float(np.median(values[:START_POINTS]))
    if level0 <= 0:
        return None
    view = view_url(data.run_id, "scalars", name=[name])
    stuck, swinging, flat = [], [], []
    for part in parts:
        window = values[part]
        median = float(np.median(window))
        spread = float(np.percentile(window, 90) - np.percentile(window, 10))
        stuck.append(median >= NO_PROGRESS * level0)
        swinging.append(median > 0 and spread >= SWING * median)
        flat.append(median > 0 and spread <= FLAT * median)
    osc = first_lasting([s and w for s, w in zip(stuck, swinging, strict=True)])
    if osc is not None:
        first, last = int(steps[parts[osc][0]]), int(steps[-1])
        return Finding(
            kind="oscillating_loss", step=first, last_step=last, severity="warning",
            confidence=0.7, scalar=name, view=view,
            message=f"The loss `{name}` swings up and down without going down from step "
            f"{first} to {last}; the learning rate may be too high.",
            evidence={"window_start": first, "window_end": last, "start_level": level0},
        )  # fmt: skip
    # slow: flat and stuck from the start, over at least the first two windows
    slow = 0
    while slow < len(parts) and stuck[slow] and flat[slow]:
        slow += 1
    if slow >= 2:
        first, last = int(steps[0]), int(steps[parts[slow - 1][-1]])
        whole = slow == len(parts)
        return Finding(
            kind="slow_convergence", step=first, last_step=last,
            severity="warning" if whole else "info", confidence=0.6, scalar=name, view=view,
            message=f"The loss `{name}` did not move beyond noise from step {first} to {last}; "
            f"the learning rate may be too low or the gradients may not reach the weights.",
            evidence={"window_start": first, "window_end": last, "start_level": level0},
        )  # fmt: skip
    return None


def detect_losses(data: RunData) -> list[Finding]:
    findings: list[Finding] = []
    for name, (steps, values) in data.scalars.items():
        diverged = _divergence(data, name, steps, values)
        if diverged is not None:
            findings.append(diverged)
            continue  # a diverged loss swings and stalls too: that says nothing more
        trend = _trend(data, name, steps, values)
        if trend is not None:
            findings.append(trend)
    return findings
