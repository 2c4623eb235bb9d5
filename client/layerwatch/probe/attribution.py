"""Integrated-gradient attributions of probe samples, computed with Captum.

Integrated gradients (Sundararajan et al., 2017) explain one output of a model
for one input: each input element's share of the rise of that output from a
baseline (all zeros here) to the input, the path integral of the gradient
approximated with `steps` points. The shares sum to the rise up to the
convergence delta that Captum reports, which is sent along.

Captum is optional: `pip install "layerwatch[attribution]"`. `require_captum()`
says so at `Run.watch()` time rather than at the first probe.
"""

from __future__ import annotations

import base64

import torch
from torch import nn

from layerwatch import wire
from layerwatch.errors import ConfigError


def require_captum() -> None:
    """Raise `ConfigError` unless Captum can be imported."""
    try:
        import captum.attr  # noqa: F401
    except ImportError:
        raise ConfigError(
            'probe attributions need Captum: pip install "layerwatch[attribution]"'
        ) from None


def integrated_gradients(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, steps: int, batch_size: int
) -> wire.ProbeAttributions:
    """Attributions of `inputs` (samples first) toward the class `targets[i]` of each.

    The model should be in eval mode (the probe puts it there); its parameters'
    `.grad` are not touched, gradients are taken for the inputs alone. At most
    `batch_size` interpolated inputs go through the model at once.
    """
    from captum.attr import IntegratedGradients

    targets = targets.to(device=inputs.device, dtype=torch.long)
    with torch.enable_grad():
        values, deltas = IntegratedGradients(model).attribute(
            inputs.detach(),
            target=targets,
            n_steps=steps,
            internal_batch_size=batch_size,
            return_convergence_delta=True,
        )
    host = values.detach().to(torch.float32).cpu().numpy().astype("<f4", copy=False)
    return wire.ProbeAttributions(
        shape=list(values.shape),
        values=base64.b64encode(host.tobytes()),
        targets=base64.b64encode(targets.to(torch.int32).cpu().numpy().astype("<i4").tobytes()),
        steps=steps,
        deltas=deltas.detach().to(torch.float64).cpu().tolist(),
    )
