"""Which model and optimizer a watch is of: wrappers stripped, and the model's name in its run.

`torch.compile`, `DistributedDataParallel` and `DataParallel` wrap a model and prefix
every module name (`_orig_mod.`, `module.`); watching the model inside keeps the
user's names, so such runs overlay with eager ones. Training libraries wrap the
optimizer (accelerate's `AcceleratedOptimizer`, Lightning's `LightningOptimizer`)
in objects whose `step()` calls the real one's, whose hooks are what counts.
"""

from __future__ import annotations

import weakref
from typing import cast

import torch

from layerwatch.errors import ConfigError

__all__ = ["ModelNames", "unwrap_model", "unwrap_optimizer"]

_MODEL_WRAPPERS = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The user's module inside `torch.compile`, DDP and `DataParallel` wrappers, in any
    nesting."""
    while True:
        if isinstance(model, _MODEL_WRAPPERS):
            model = model.module
        elif _is_compiled(model):
            model = cast("torch.nn.Module", model._orig_mod)
        else:
            return model


def _is_compiled(model: torch.nn.Module) -> bool:
    # By name: `torch._dynamo` is slow to import, and a compiled model has imported it.
    inner = getattr(model, "_orig_mod", None)
    return type(model).__name__ == "OptimizedModule" and isinstance(inner, torch.nn.Module)


def unwrap_optimizer(optimizer: object) -> torch.optim.Optimizer:
    """The torch optimizer doing the steps: `optimizer`, or the one it wraps in its
    `optimizer` (accelerate) or `_optimizer` (Lightning) attribute."""
    seen = optimizer
    for _ in range(8):  # wrappers of wrappers, but never a cycle
        if isinstance(optimizer, torch.optim.Optimizer) and _has_hooks(optimizer):
            return optimizer
        inner = getattr(optimizer, "optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer):
            inner = getattr(optimizer, "_optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer) or inner is optimizer:
            break
        optimizer = inner
    raise ConfigError(
        "`optimizer` must be a torch.optim.Optimizer, or a wrapper keeping one in its "
        f"`optimizer` or `_optimizer` attribute, not {type(seen).__name__}"
    )


def _has_hooks(optimizer: torch.optim.Optimizer) -> bool:
    # A wrapper subclassing Optimizer without calling its __init__ (accelerate's) has
    # no hook dictionaries of its own: its step hooks would never fire anyway.
    return "_optimizer_step_pre_hooks" in vars(optimizer)


class ModelNames:
    """The names of the models watched in one run: a model keeps its name for the
    whole run (a second `watch()` of it, or one after `remove()`, reuses it), and
    no two models share one."""

    def __init__(self) -> None:
        self._models: dict[str, weakref.ref[torch.nn.Module]] = {}

    @property
    def several(self) -> bool:
        """True once the run has watched more than one model."""
        return len(self._models) > 1

    def resolve(self, model: torch.nn.Module, name: str | None) -> str:
        """The name `model` has, or would get: `name`, or its class name made unique
        (`Sequential`, `Sequential-2`, ...). Raises `ConfigError` when `name` is another
        model's, or `model` already has another name."""
        own = next((n for n, ref in self._models.items() if ref() is model), None)
        if own is not None:
            if name is not None and name != own:
                raise ConfigError(f"this model is watched as `{own}` in this run, not `{name}`")
            return own
        if name is not None:
            if not isinstance(name, str) or not name or "/" in name or len(name) > 100:
                raise ConfigError(f"`name` must be 1-100 characters without `/`, not {name!r}")
            if self._taken(name):
                raise ConfigError(f"another model is watched as `{name}` in this run")
            return name
        base = type(model).__name__
        candidate, n = base, 1
        while self._taken(candidate):
            n += 1
            candidate = f"{base}-{n}"
        return candidate

    def register(self, model: torch.nn.Module, name: str) -> None:
        """Give `model` the `name` that `resolve()` returned."""
        self._models[name] = weakref.ref(model)

    def _taken(self, name: str) -> bool:
        # A name stays taken while its model lives, so records never mix two models.
        ref = self._models.get(name)
        return ref is not None and ref() is not None
