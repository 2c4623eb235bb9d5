"""Reduce a tensor to a few summary statistics, on its own device, without a host sync.

Everything here is pure torch and runs inside forward hooks, so nothing may read a
value back to the host: no `.item()`, `.cpu()`, `.tolist()`, no `if` on a tensor, no
boolean-mask indexing (its output size needs a sync). Only shapes, which the host
already knows, are used as Python numbers.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from layerwatch.wire import STAT_NAMES

__all__ = ["NUM_STATS", "activation_stats", "first_float_tensor"]

NUM_STATS = len(STAT_NAMES)


def activation_stats(tensor: torch.Tensor) -> torch.Tensor:
    """Return the statistics of `tensor` as one float32 tensor of shape `(NUM_STATS,)`.

    The order is `wire.STAT_NAMES`: mean, std, min, max, abs_mean and l2 over the
    finite elements (NaN when there is none; std is the population std), zero_frac
    over all elements, the count of non-finite elements, and numel. The result lives
    on `tensor`'s device; computing it queues about twenty small kernels (ten passes
    over the data, a few full-size temporaries) and never waits.
    """
    with torch.no_grad():
        x = tensor.detach().reshape(-1)  # (N,)
        if x.dtype != torch.float32:
            x = x.to(torch.float32)  # bf16/fp16 are upcast; float64 is summarised in float32
        n = x.numel()
        if n == 0:
            empty = torch.full((NUM_STATS,), float("nan"), dtype=torch.float32, device=x.device)
            empty[-2:] = 0.0  # nonfinite, numel
            return empty
        # One pass writes the finite values with 0 for the rest; comparing it with x
        # gives the finite mask (NaN != 0, inf != 0) without `isfinite`'s temporaries.
        x_finite = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)  # (N,)
        finite = x == x_finite  # (N,) bool
        count = torch.count_nonzero(finite)  # () int64; 0 makes mean 0/0 = NaN
        mean = x_finite.sum() / count  # ()
        # Non-finite -> mean: it lies within [min, max] and adds 0 to the squared
        # deviations, so one tensor serves min, max and std. With no finite element,
        # mean is NaN and so are they.
        x_centred = torch.where(finite, x, mean)  # (N,)
        lo, hi = torch.aminmax(x_centred)  # (), ()
        deviation = x_centred - mean  # (N,)
        squares = torch.dot(deviation, deviation)  # () sum of squared deviations
        std = (squares / count).sqrt()  # () population std (ddof=0)
        abs_mean = torch.linalg.vector_norm(x_finite, ord=1) / count  # ()
        l2 = (squares + count * mean * mean).sqrt()  # () sum x^2 = sum (x-m)^2 + n m^2
        zero_frac = (n - torch.count_nonzero(x)) / n  # () NaN and inf are not zero
        nonfinite = n - count  # () int64, exact
        numel = torch.full_like(mean, n)  # () a fill, not a host-to-device copy
        stats = torch.stack([mean, std, lo, hi, abs_mean, l2, zero_frac, nonfinite, numel])
        return stats.to(torch.float32)  # (NUM_STATS,); a no-op unless the default is float64


def first_float_tensor(output: object, _depth: int = 0) -> torch.Tensor | None:
    """The tensor a module output is summarised by: itself, or the first floating-point
    tensor in a tuple, list or dict (searched a few levels deep); None when there is none."""
    if isinstance(output, torch.Tensor):
        return output if output.is_floating_point() else None
    if _depth >= 3:
        return None
    items: Iterable[object]
    if isinstance(output, dict):
        items = output.values()
    elif isinstance(output, (tuple, list)):
        items = output
    else:
        return None
    for item in items:
        found = first_float_tensor(item, _depth + 1)
        if found is not None:
            return found
    return None
