"""`eager`: keep a hook's work out of `torch.compile` graphs."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, cast

import torch

__all__ = ["eager"]

_F = TypeVar("_F", bound=Callable[..., None])


def eager(function: _F) -> _F:
    """`function`, run eagerly even when called from a `torch.compile`d model."""
    return cast("_F", torch.compiler.disable(function))  # type: ignore[no-untyped-call]
