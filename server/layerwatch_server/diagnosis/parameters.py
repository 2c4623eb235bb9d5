"""Whether parameters move, and by how much: not updating, frozen, update-to-weight ratio."""

from __future__ import annotations

import numpy as np

from layerwatch_server.diagnosis.findings import Evidence, Finding, first_lasting, view_url
from layerwatch_server.diagnosis.loader import RunData
from layerwatch_server.schemas import Severity
from layerwatch_server.views.tensors import is_bias

MIN_CAPTURES = 2
"""Weight changes needed before a parameter is said not to move: one could be a fluke."""
RATIO_TARGET = 1e-3
"""The rule of thumb for an update's norm against its weights' (Karpathy's ~1e-3)."""
RATIO_HIGH = 1e-1
"""Updates above this share of the weights, 100x the rule, suggest a learning rate too high."""
RATIO_LOW = 1e-5
"""Updates below this share, 100x under the rule, suggest a learning rate too low."""
RATIO_EXTREME = 1e2
"""A median this many times beyond the bound (a step replacing the weights, or moving them by
one part in ten million) is a warning, not information."""
RATIO_MOST = 0.5
"""Share of the weight layers that must be outside the band (strictly more) for a finding."""
MOVING_GRADIENT = 1e-4
"""A gradient norm at least this share of its weights' would move them under any usual
learning rate; a smaller one may vanish below float32 resolution instead."""


def detect_not_updating(data: RunData) -> list[Finding]:
    findings: list[Finding] = []
    has_grads = bool(data.of_kind("grad"))
    for weight in data.of_kind("weight"):
        present = data.weight_changes["present"][weight.row] == 1.0
        change = data.weight_changes["since_prev"][weight.row][present]
        steps = np.asarray(data.steps)[present]
        finite = np.isfinite(change)
        if finite.sum() < MIN_CAPTURES or (change[finite] != 0).any():
            continue
        first, last = int(steps[finite][0]), int(steps[finite][-1])
        grad = data.find(weight.name, "grad")
        grad_l2 = data.series(grad, "l2")[1] if grad is not None else np.empty(0)
        weight_l2 = data.series(weight, "l2")[1]
        scale = float(np.nanmax(weight_l2)) if np.isfinite(weight_l2).any() else 0.0
        moved = np.isfinite(grad_l2) & (grad_l2 > MOVING_GRADIENT * scale) & (grad_l2 > 0)
        view = view_url(data.run_id, "weight-change", tensor=[weight.name], bias="true")
        evidence: Evidence = {
            "captures": int(finite.sum()),
            "grad_l2_max": float(grad_l2[moved].max()) if moved.any() else 0.0,
        }
        severity: Severity
        if moved.any():
            severity = "warning"
            message = (
                f"`{weight.name}` gets gradients but has not changed from step {first} on: "
                "it is probably not passed to the optimizer."
            )
        elif has_grads and grad is None:
            severity = "info"
            message = (
                f"`{weight.name}` is frozen: it never had a gradient and has not changed "
                f"since step {first}."
            )
        else:
            continue
        findings.append(Finding(
            kind="not_updating", step=first, last_step=last, severity=severity,
            confidence=0.9, tensor=weight.name, tensor_kind="weight", evidence=evidence,
            message=message, view=view,
        ))  # fmt: skip
    return findings


def detect_update_ratio(data: RunData) -> list[Finding]:
    weights = [w for w in data.of_kind("weight") if not is_bias(w.name)]
    if not weights:
        return []
    ratios = np.stack([data.weight_changes["update_ratio"][w.row] for w in weights])
    # a parameter that does not move at all is `not_updating`'s, not a learning rate's
    ratios = np.where(np.isfinite(ratios) & (ratios > 0), ratios, np.nan)
    counted = np.isfinite(ratios).sum(axis=0)  # (steps,)
    columns = np.flatnonzero(counted > 0)
    if columns.size < MIN_CAPTURES:
        return []
    findings: list[Finding] = []
    for side, bound in (("high", RATIO_HIGH), ("low", RATIO_LOW)):
        with np.errstate(invalid="ignore"):
            outside = (ratios > bound) if side == "high" else (ratios < bound)
        share = outside[:, columns].sum(axis=0) / counted[columns]
        start = first_lasting(share > RATIO_MOST)
        if start is None:
            continue
        begin = int(columns[start])
        hit = np.asarray(outside[:, begin:].any(axis=1), dtype=bool)
        kept = ratios[hit, begin:][np.isfinite(ratios[hit, begin:])]
        median = float(np.median(kept))
        layers = [w.name for w, h in zip(weights, hit.tolist(), strict=True) if h]
        extreme = median > bound * RATIO_EXTREME if side == "high" else (
            median < bound / RATIO_EXTREME)  # fmt: skip
        much, advice = ("much", "too high") if side == "high" else ("little", "too low")
        findings.append(Finding(
            kind="update_ratio", step=data.steps[begin], last_step=data.steps[-1],
            severity="warning" if extreme else "info", confidence=float(share[start:].mean()),
            tensor=layers[0] if layers else None, tensor_kind="weight" if layers else None,
            message=f"From step {data.steps[begin]} each update moves most weights (median "
            f"{median:.1e} of their norm, against ~{RATIO_TARGET:g}) by too {much}: the "
            f"learning rate is likely {advice}.",
            evidence={"median_ratio": median, "bound": bound, "side": side, "layers": layers,
                      "target": RATIO_TARGET},
            view=view_url(data.run_id, "weight-change", metric="update_ratio"),
        ))  # fmt: skip
    return findings
