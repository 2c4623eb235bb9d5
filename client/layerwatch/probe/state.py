"""The model as it was: what a probe puts back (`kept_state`), and autocast kept off
for its own work (`autocast_off`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from layerwatch.logs import logger

__all__ = ["autocast_off", "kept_state"]


@contextlib.contextmanager
def kept_state(model: nn.Module) -> Iterator[torch.device | None]:
    """Put the model's state back on leaving, whatever ran; yields the model's device.

    Kept: every module's `training` flag, the CPU and CUDA RNG states, and the
    normalisation modules' running statistics; any other buffer that changed (by its
    version counter) is logged. Parameters' `.grad` need no keeping: nothing run
    here accumulates into them.
    """
    params = list(model.parameters())
    first = params[0] if params else next(iter(model.buffers()), None)
    cuda = sorted({p.device.index or 0 for p in params if p.is_cuda})
    flags = [(module, module.training) for module in model.modules()]  # the model first
    norms = [b for m in model.modules() if isinstance(m, _NormBase) for b in m.buffers()]
    saved = [(b, b.clone()) for b in norms]  # running stats: a few KiB
    versions = [(name, b, b._version) for name, b in model.named_buffers()]
    try:
        with torch.random.fork_rng(devices=cuda):
            yield None if first is None else first.device
    finally:
        model.train(flags[0][1])  # symmetric with eval(): a user's train() override runs
        for module, training in flags:
            module.training = training
        with torch.no_grad():
            for buffer, copy in saved:
                # batch_norm updates its running stats without bumping their version
                # counter: compare values, and write only what changed, so that a graph
                # that saved these buffers is not invalidated for nothing.
                if not torch.equal(buffer, copy):
                    buffer.copy_(copy)
        restored = {id(b) for b in norms}
        changed = [n for n, b, v in versions if b._version != v and id(b) not in restored]
        if changed:
            logger.warning(
                "layerwatch: the probe's eval forward changed buffers %s; left as they are",
                ", ".join(changed),
            )


@contextlib.contextmanager
def autocast_off(device: torch.device | None) -> Iterator[None]:
    """Autocast disabled on the CPU and on the model's device, whatever the caller's
    context: under CPU autocast `torch.cat` of float16 tensors fails outright."""
    types = {"cpu"} | ({device.type} if device is not None else set())
    with contextlib.ExitStack() as stack:
        for device_type in sorted(types):
            if torch.amp.is_autocast_available(device_type):
                stack.enter_context(torch.autocast(device_type, enabled=False))
        yield
