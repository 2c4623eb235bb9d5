"""`TreeRecorder`: the module tree of a model with the shapes of its first forward pass.

Each module counts the parameters it owns, a parameter shared by several modules
(tied weights) at its first owner only, so the counts add up to the model's size.
Hooks on every module note the shapes of their tensor inputs and outputs during
the first forward pass; when the model's own forward returns, the tree goes on the
queue once and the hooks remove themselves. Later passes cost nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pydantic
import torch

from layerwatch import wire
from layerwatch.capture.eager import eager
from layerwatch.logs import logger
from layerwatch.records import ModelRecord

if TYPE_CHECKING:
    from torch.utils.hooks import RemovableHandle

__all__ = ["TreeRecorder", "owned_parameters", "tensor_shapes"]

_MAX_SHAPES = 64


class TreeRecorder:
    """Sends `model`'s `wire.ModelTree` at its first forward pass, through `put`."""

    def __init__(self, model: torch.nn.Module, put: Callable[[ModelRecord], bool]) -> None:
        self._model = model
        self._put = put
        self._shapes: dict[str, tuple[list[list[int]], list[list[int]]]] = {}
        self._handles: list[RemovableHandle] = []
        for path, module in model.named_modules():
            self._handles.append(module.register_forward_hook(self._make_hook(path)))

    @property
    def done(self) -> bool:
        return not self._handles

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _make_hook(
        self, path: str
    ) -> Callable[[torch.nn.Module, tuple[object, ...], object], None]:
        @eager  # runs once, eagerly, even inside a compiled model
        def hook(module: torch.nn.Module, args: tuple[object, ...], output: object) -> None:
            if path not in self._shapes:
                try:
                    self._shapes[path] = (tensor_shapes(args), tensor_shapes(output))
                except Exception:  # shapes are a nicety: never fail the user's forward
                    self._shapes[path] = ([], [])
            if module is self._model:
                self._send()

        return hook

    def _send(self) -> None:
        self.remove()
        try:
            modules = []
            for path, module, params in owned_parameters(self._model):
                modules.append(
                    wire.ModuleInfo(
                        path=path,
                        type=type(module).__name__,
                        params=sum(p.numel() for p in params),
                        trainable=sum(p.numel() for p in params if p.requires_grad),
                        inputs=self._shapes.get(path, (None, None))[0],
                        outputs=self._shapes.get(path, (None, None))[1],
                    )
                )
            tree = wire.ModelTree(name=type(self._model).__name__, modules=modules)
        except pydantic.ValidationError as exc:
            logger.warning("layerwatch: not sending the model's structure: %s", exc)
            return
        self._put(ModelRecord(tree))


def owned_parameters(
    model: torch.nn.Module,
) -> list[tuple[str, torch.nn.Module, list[torch.nn.Parameter]]]:
    """Each module of `model` in `named_modules()` order with the parameters it counts.

    A module counts its own parameters (not its children's), except those an earlier
    module already counted: a parameter shared by several modules (tied weights, such
    as a language model head reusing the embedding matrix) is counted once, at its
    first owner, as `model.parameters()` lists it. The counts then add up to the
    model's parameter count.
    """
    seen: set[int] = set()
    owned = []
    for path, module in model.named_modules():
        params = []
        for param in module.parameters(recurse=False):
            if id(param) not in seen:
                seen.add(id(param))
                params.append(param)
        owned.append((path, module, params))
    return owned


def tensor_shapes(value: object) -> list[list[int]]:
    """Shapes of the tensors in `value`: a tensor, or a tuple, list or dict of them
    (one level deep), at most 64; a nested tensor has its padded shape."""
    if isinstance(value, torch.Tensor):
        items: list[object] = [value]
    elif isinstance(value, (tuple, list)):
        items = list(value)
    elif isinstance(value, dict):
        items = list(value.values())
    else:
        items = []
    shapes = [_shape(item) for item in items if isinstance(item, torch.Tensor)]
    return shapes[:_MAX_SHAPES]


def _shape(tensor: torch.Tensor) -> list[int]:
    """The shape of `tensor`; of a nested one, its padded shape (the longest component
    in each dimension)."""
    if not tensor.is_nested:
        return list(tensor.shape)
    parts = tensor.unbind()
    if not parts:
        return [0]
    return [len(parts)] + [max(part.shape[d] for part in parts) for d in range(parts[0].dim())]
