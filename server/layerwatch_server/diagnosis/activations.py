"""What layers output: dead units, saturated squashing functions."""

from __future__ import annotations

import numpy as np

from layerwatch_server.diagnosis.findings import Finding, first_lasting, view_url
from layerwatch_server.diagnosis.loader import RunData, TensorInfo

DEAD_SHARE = 0.5
"""A layer with at least half its units at exactly 0 on whole batches has lost its capacity;
a healthy ReLU layer rarely passes a few percent."""
DEAD_ALL = 0.99
"""Past this share (every unit, give or take rounding) the layer passes nothing: an error."""
BOUNDS: dict[str, tuple[float, float]] = {
    "Tanh": (-1.0, 1.0), "Sigmoid": (0.0, 1.0), "Hardtanh": (-1.0, 1.0),
    "Softsign": (-1.0, 1.0), "Hardsigmoid": (0.0, 1.0), "ReLU6": (0.0, 6.0),
}  # fmt: skip
"""Modules whose outputs are bounded, and their bounds."""
SATURATED = 0.8
"""Saturated when the variance reaches this share of the largest one the bounds allow
(``(mean - lo) * (hi - mean)``, reached only with every element at a bound): most elements
must then sit at a bound. A healthy tanh layer stays near 0.3."""


def _dead_shares(data: RunData, tensor: TensorInfo) -> tuple[list[int], np.ndarray] | None:
    """(steps, share of units with a mean of exactly 0) per capture."""
    if tensor.name in data.unit_means:
        steps, means = data.unit_means[tensor.name]  # (steps, units)
        finite = np.isfinite(means)
        counted = finite.sum(axis=1)
        keep = counted > 0
        shares = ((means == 0) & finite).sum(axis=1)[keep] / counted[keep]
        return [s for s, k in zip(steps, keep, strict=True) if k], shares
    captured, zero_frac = data.series(tensor, "zero_frac")
    if not captured.size:
        return None
    # without unit means, only a layer that is zero everywhere is known to be dead
    return [int(s) for s in captured], np.where(zero_frac >= 1.0, 1.0, 0.0)


def detect_dead_units(data: RunData) -> list[Finding]:
    findings: list[Finding] = []
    for tensor in data.of_kind("activation"):
        shares = _dead_shares(data, tensor)
        if shares is None:
            continue
        steps, share = shares
        start = first_lasting(share >= DEAD_SHARE)
        if start is None:
            continue
        now = float(share[-1])
        findings.append(Finding(
            kind="dead_units", step=steps[start], last_step=steps[-1],
            severity="error" if now >= DEAD_ALL else "warning",
            confidence=min(1.0, 0.5 + float(share[start:].mean()) / 2),
            tensor=tensor.name, tensor_kind="activation",
            message=f"{now:.0%} of the units of `{tensor.name}` output exactly 0 on every "
            f"sample from step {steps[start]} on: they are dead and no longer learn.",
            evidence={"share": float(share[start]), "latest_share": now,
                      "threshold": DEAD_SHARE, "by_unit_means": tensor.name in data.unit_means},
            view=view_url(data.run_id, "dead-units", tensor=tensor.name),
        ))  # fmt: skip
    return findings


def detect_saturation(data: RunData) -> list[Finding]:
    findings: list[Finding] = []
    for tensor in data.of_kind("activation"):
        bounds = BOUNDS.get(tensor.module_type or "")
        if bounds is None:
            continue
        lo, hi = bounds
        steps, mean = data.series(tensor, "mean")
        std = data.series(tensor, "std")[1]
        with np.errstate(invalid="ignore", divide="ignore"):
            room = (mean - lo) * (hi - mean)
            pinned = np.where(room > 0, std**2 / room, np.where(np.isfinite(mean), 1.0, np.nan))
        start = first_lasting(np.nan_to_num(pinned, nan=0.0) >= SATURATED)
        if start is None:
            continue
        latest = float(pinned[-1])
        findings.append(Finding(
            kind="saturation", step=int(steps[start]), last_step=int(steps[-1]),
            severity="warning", confidence=min(1.0, float(np.nanmean(pinned[start:]))),
            tensor=tensor.name, tensor_kind="activation",
            message=f"`{tensor.name}` ({tensor.module_type}) is saturated from step "
            f"{int(steps[start])}: most outputs sit at {lo:g} or {hi:g}, where its gradient "
            f"is almost 0; scale its inputs down (initialisation, normalisation).",
            evidence={"saturation": latest, "threshold": SATURATED, "low": lo, "high": hi,
                      "mean": float(mean[-1]), "std": float(std[-1])},
            view=view_url(data.run_id, "distributions", tensor=tensor.name),
        ))  # fmt: skip
    return findings
