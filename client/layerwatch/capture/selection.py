"""Which modules and parameters of a model a `Watch` covers: by qualified name (glob or
regular expression) and by module class."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

import torch

from layerwatch.errors import ConfigError

__all__ = [
    "Selection",
    "select_leaves",
    "select_modules",
    "select_outputs",
    "select_parameters",
]

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
    return [(shown, module) for _, shown, module in _chosen(model, include, exclude)]


def _chosen(
    model: torch.nn.Module, include: Selection, exclude: Selection
) -> list[tuple[str, str, torch.nn.Module]]:
    """(path, shown name, module) of the modules `select_modules()` keeps."""
    includes, excludes = _selectors(include, "include"), _selectors(exclude, "exclude")
    chosen = []
    for path, module in model.named_modules():
        shown = path or type(model).__name__
        if includes is not None and not any(_matches(shown, module, s) for s in includes):
            continue
        if any(_matches(shown, module, s) for s in excludes or ()):
            continue
        chosen.append((path, shown, module))
    return chosen


def select_leaves(
    model: torch.nn.Module, include: Selection = None, exclude: Selection = None
) -> list[tuple[str, torch.nn.Module]]:
    """The leaf modules (those without children) among `select_modules()`."""
    chosen = select_modules(model, include, exclude)
    return [(name, module) for name, module in chosen if next(module.children(), None) is None]


def select_outputs(
    model: torch.nn.Module, include: Selection = None, exclude: Selection = None
) -> list[tuple[str, torch.nn.Module]]:
    """The modules among `select_modules()` whose outputs `watch()` records.

    * every leaf (a module without children);
    * every attention block (`nn.MultiheadAttention`): its output projection
      `out_proj` is a leaf that is never called (the block uses its weights), so the
      modules inside a block are left out and the block is recorded instead;
    * with `include`, every module with children that an `include` item matches
      while matching no module inside it: `include="layers.0"` or
      `include=nn.TransformerEncoderLayer` records those blocks' outputs, while
      `include="encoder.*"`, which also matches what is inside, records the leaves.
    """
    outside = [
        (path, module)
        for path, module in model.named_modules()
        if not _inside_attention(model, path)
    ]
    named: set[str] = set()
    for selector in _selectors(include, "include") or ():
        matched = {p for p, m in outside if _matches(p or type(model).__name__, m, selector)}
        named |= matched - {a for p in matched for a in _ancestors(p)}
    kept = {path for path, _ in outside}
    return [
        (shown, module)
        for path, shown, module in _chosen(model, include, exclude)
        if path in kept
        and (
            next(module.children(), None) is None
            or isinstance(module, torch.nn.MultiheadAttention)
            or path in named
        )
    ]


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


def _ancestors(path: str) -> list[str]:
    """The paths of the modules enclosing the one at `path`, the model's `""` included."""
    found = []
    while path:
        path = path.rpartition(".")[0]
        found.append(path)
    return found


def _inside_attention(model: torch.nn.Module, path: str) -> bool:
    return any(
        isinstance(model.get_submodule(a), torch.nn.MultiheadAttention) for a in _ancestors(path)
    )


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
