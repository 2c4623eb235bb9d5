"""Gradient norms across layers and over steps: vanishing and exploding gradients."""

from __future__ import annotations

import numpy as np

from layerwatch_server.diagnosis.findings import Finding, first_lasting, view_url
from layerwatch_server.diagnosis.loader import RunData, TensorInfo
from layerwatch_server.views.tensors import is_bias

VANISHING_RATIO = 1e-3
"""An early layer's gradient norm below this share of the largest later one: three orders
of magnitude, far beyond the spread depth gives a normally initialised network."""
VANISHING_RELATIVE = 1e-8
"""Or its gradient norm below this share of its weights' norm: no step can move them."""
EXPLODING_JUMP = 1e3
"""A gradient norm this many times the median of its own recent captures has exploded."""
EXPLODING_RECENT = 5
"""Captures making up that recent history."""
GEOMETRIC_CAPTURES = 5
"""Consecutive growing captures that count as geometric growth ..."""
GEOMETRIC_GROWTH = 1e3
"""... when together they multiply the norm by at least this much."""


def _gradients(data: RunData) -> list[TensorInfo]:
    """Gradients of weights (biases left out) in network order."""
    order = {name: i for i, name in enumerate(data.parameter_order())}
    grads = [t for t in data.of_kind("grad") if not is_bias(t.name)]
    return sorted(grads, key=lambda t: order.get(t.name, len(order)))


def _share(flags: np.ndarray) -> float:
    return float(flags.mean()) if flags.size else 0.0


def detect_vanishing_gradients(data: RunData) -> list[Finding]:
    grads = _gradients(data)
    if len(grads) < 2:
        return []
    norms = np.stack([data.stats["l2"][t.row] for t in grads])  # (layers, steps)
    bad = np.stack([np.nan_to_num(data.stats["nonfinite"][t.row]) > 0 for t in grads])
    # exact zeros are a cut path (dead units, unused layers), NaN the nonfinite detector's
    norms = np.where((norms > 0) & ~bad.any(axis=0), norms, np.nan)
    weights = [data.find(t.name, "weight") for t in grads]
    weight_norms = np.stack(
        [data.stats["l2"][w.row] if w else np.full(len(data.steps), np.nan) for w in weights]
    )
    early = max(1, len(grads) // 2)  # the first half of the network against the rest
    with np.errstate(invalid="ignore", divide="ignore"):
        late = np.fmax.reduce(np.where(np.isfinite(norms[early:]), norms[early:], np.nan), axis=0)
        ratio = norms[:early] / late  # (early layers, steps)
        relative = norms[:early] / weight_norms[:early]
    small = (ratio < VANISHING_RATIO) | (relative < VANISHING_RELATIVE)
    captured = np.isfinite(ratio) | np.isfinite(relative)
    first_layer = small[0] & captured[0]
    start = first_lasting(first_layer[captured[0]])
    if start is None:
        return []
    columns = np.flatnonzero(captured[0])
    begin = int(columns[start])
    affected = [grads[i].name for i in range(early)
                if _share(small[i, begin:][captured[i, begin:]]) >= 0.5]  # fmt: skip
    tail = ratio[0, begin:][np.isfinite(ratio[0, begin:])]
    median_ratio = float(np.median(tail)) if tail.size else 0.0
    return [Finding(
        kind="vanishing_gradients", step=data.steps[begin], last_step=data.steps[-1],
        severity="warning", confidence=0.9 if median_ratio < VANISHING_RATIO / 10 else 0.7,
        tensor=grads[0].name, tensor_kind="grad",
        message=f"Gradients vanish in the early layers: from step {data.steps[begin]} the "
        f"gradient of `{grads[0].name}` is {median_ratio:.1e} times the largest in later "
        f"layers, so they barely learn.",
        evidence={"affected": affected, "ratio_to_late": median_ratio,
                  "threshold": VANISHING_RATIO, "late_layers": [t.name for t in grads[early:]]},
        view=view_url(data.run_id, "gradient-flow", step=data.steps[begin]),
    )]  # fmt: skip


def _explosion_start(values: np.ndarray) -> tuple[int, float] | None:
    """(index, factor) where a norm series first jumps or grows geometrically, if it does."""
    for k in range(2, len(values)):
        recent = values[max(0, k - EXPLODING_RECENT) : k]
        recent = recent[np.isfinite(recent)]
        if recent.size < 2 or np.median(recent) <= 0 or np.isnan(values[k]):
            continue
        factor = float(values[k] / np.median(recent))
        if factor >= EXPLODING_JUMP:
            return k, factor
    for k in range(len(values) - GEOMETRIC_CAPTURES):
        window = values[k : k + GEOMETRIC_CAPTURES + 1]
        if (np.isfinite(window[:-1]).all() and window[0] > 0 and (np.diff(window) > 0).all()
                and window[-1] / window[0] >= GEOMETRIC_GROWTH):  # fmt: skip
            return k, float(window[-1] / window[0])
    return None


def detect_exploding_gradients(data: RunData) -> list[Finding]:
    hits: list[tuple[int, float, TensorInfo]] = []
    for grad in _gradients(data):
        steps, values = data.series(grad, "l2")
        found = _explosion_start(values)
        if found is not None:
            hits.append((int(steps[found[0]]), found[1], grad))
    if not hits:
        return []
    step, factor, first = min(hits, key=lambda hit: hit[0])
    return [Finding(
        kind="exploding_gradients", step=step, last_step=max(h[0] for h in hits),
        severity="error", confidence=min(1.0, 0.6 + 0.1 * len(hits)),
        tensor=first.name, tensor_kind="grad",
        message=f"Gradients explode from step {step}: the gradient norm of `{first.name}` "
        + (f"grew {factor:.0e} times" if np.isfinite(factor) else "overflowed to infinity")
        + " against its recent captures; lower the learning rate or clip gradients.",
        evidence={"factor": factor if np.isfinite(factor) else None, "threshold": EXPLODING_JUMP,
                  "tensors": [h[2].name for h in sorted(hits, key=lambda h: h[0])],
                  "steps": sorted(h[0] for h in hits)},
        view=view_url(data.run_id, "series", tensor=[h[2].name for h in hits][:8], kind="grad",
                      stat="l2", logy="true"),
    )]  # fmt: skip
