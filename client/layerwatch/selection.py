"""Which modules of a model a `Watch` covers: by qualified name (glob or regular
expression) and by type."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from layerwatch.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["Patterns", "Types", "select_leaves", "select_modules"]

Pattern = str | re.Pattern[str]
Patterns = Pattern | Iterable[Pattern] | None
Types = type | str | Iterable[type | str] | None


def select_modules(
    model: torch.nn.Module,
    include: Patterns = None,
    exclude: Patterns = None,
    types: Types = None,
    exclude_types: Types = None,
) -> list[tuple[str, torch.nn.Module]]:
    """The modules of `model` whose qualified name matches a pattern of `include` (all
    when None) and none of `exclude`, and whose type is one of `types` (all when None)
    and none of `exclude_types`.

    A pattern is an `fnmatch` glob (`"encoder.*"`) or a compiled regular expression
    that must match the whole name; a type is a class (subclasses match) or a class
    name. The model itself, named `""` by `named_modules()`, is named after its class.
    """
    includes, excludes = _patterns(include, "include"), _patterns(exclude, "exclude")
    wanted, unwanted = _types(types, "types"), _types(exclude_types, "exclude_types")
    chosen = []
    for name, module in model.named_modules():
        shown = name or type(model).__name__
        if includes is not None and not any(_matches(shown, p) for p in includes):
            continue
        if any(_matches(shown, p) for p in excludes or ()):
            continue
        if wanted is not None and not _is_type(module, wanted):
            continue
        if unwanted and _is_type(module, unwanted):
            continue
        chosen.append((shown, module))
    return chosen


def select_leaves(
    model: torch.nn.Module, include: Patterns = None, exclude: Patterns = None
) -> list[tuple[str, torch.nn.Module]]:
    """The leaf modules (those without children) among `select_modules()`."""
    chosen = select_modules(model, include, exclude)
    return [(name, module) for name, module in chosen if next(module.children(), None) is None]


def _matches(name: str, pattern: Pattern) -> bool:
    if isinstance(pattern, re.Pattern):
        return pattern.fullmatch(name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def _is_type(module: torch.nn.Module, types: list[type | str]) -> bool:
    names = {cls.__name__ for cls in type(module).__mro__}
    return any(t in names if isinstance(t, str) else isinstance(module, t) for t in types)


def _patterns(patterns: Patterns, argument: str) -> list[Pattern] | None:
    if patterns is None:
        return None
    if isinstance(patterns, (str, re.Pattern)):
        return [patterns]
    result = list(patterns)
    if not all(isinstance(p, (str, re.Pattern)) for p in result):
        raise ConfigError(
            f"`{argument}` takes a pattern (glob or compiled regex) or a list of them, "
            f"not {patterns!r}"
        )
    return result


def _types(types: Types, argument: str) -> list[type | str] | None:
    if types is None:
        return None
    result = [types] if isinstance(types, (type, str)) else list(types)
    if not all(isinstance(t, (type, str)) for t in result):
        raise ConfigError(f"`{argument}` takes classes or class names, not {types!r}")
    return result
