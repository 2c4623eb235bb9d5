"""Which modules and parameters of a model a `Watch` covers: by qualified name (glob or
regular expression) and by module class."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

import torch

from layerwatch.errors import ConfigError

__all__ = ["Selection", "select_leaves", "select_modules", "select_parameters"]

Selector = str | re.Pattern[str] | type[torch.nn.Module]
Selection = Selector | Iterable[Selector] | None
"""A name pattern, a module class, or a list of them (any may match)."""


def select_modules(
    model: torch.nn.Module, include: Selection = None, exclude: Selection = None
) -> list[tuple[str, torch.nn.Module]]:
    """The modules of `model` that match an item of `include` (all when None) and no
    item of `exclude`.

    An item is an `fnmatch` glob (`"encoder.*"`) or a compiled regular expression,
    matched against the whole qualified name, or a module class (subclasses match):
    `include=[nn.Linear, "head.*"]` keeps every `Linear` and everything under `head`.
    The model itself, named `""` by `named_modules()`, is named after its class.
    """
    includes, excludes = _selectors(include, "include"), _selectors(exclude, "exclude")
    chosen = []
    for name, module in model.named_modules():
        shown = name or type(model).__name__
        if includes is not None and not any(_matches(shown, module, s) for s in includes):
            continue
        if any(_matches(shown, module, s) for s in excludes or ()):
            continue
        chosen.append((shown, module))
    return chosen


def select_leaves(
    model: torch.nn.Module, include: Selection = None, exclude: Selection = None
) -> list[tuple[str, torch.nn.Module]]:
    """The leaf modules (those without children) among `select_modules()`."""
    chosen = select_modules(model, include, exclude)
    return [(name, module) for name, module in chosen if next(module.children(), None) is None]


def select_parameters(
    model: torch.nn.Module, modules: Iterable[tuple[str, torch.nn.Module]]
) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters that `modules` own themselves (not through a child), by qualified name."""
    owners = {id(module) for _, module in modules}
    return [
        (name, param)
        for name, param in model.named_parameters()
        if id(_owner(model, name)) in owners
    ]


def _owner(model: torch.nn.Module, parameter: str) -> torch.nn.Module:
    path = parameter.rpartition(".")[0]
    return model.get_submodule(path) if path else model


def _matches(name: str, module: torch.nn.Module, selector: Selector) -> bool:
    if isinstance(selector, type):
        return isinstance(module, selector)
    if isinstance(selector, re.Pattern):
        return selector.fullmatch(name) is not None
    return fnmatch.fnmatchcase(name, selector)


def _selectors(selection: Selection, argument: str) -> list[Selector] | None:
    if selection is None:
        return None
    if isinstance(selection, (str, re.Pattern, type)):
        items: list[object] = [selection]
    else:
        items = list(selection)
    for item in items:
        if isinstance(item, type) and issubclass(item, torch.nn.Module):
            continue
        if not isinstance(item, (str, re.Pattern)):
            raise ConfigError(
                f"`{argument}` takes name patterns (globs or compiled regular expressions), "
                f"module classes, or a list of them, not {selection!r}"
            )
    return items  # type: ignore[return-value]
