"""Filters of runs by config value: ``config=<key>:<json value>`` in a run listing.

A run's config is a JSON document whose SQL operators differ between SQLite
and PostgreSQL (and compare numbers, booleans and strings differently), so the
filters are applied in Python, the same way on both, to the runs the other
filters (project, status, name) left: a filtered listing reads every one of
those candidate rows before it pages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pydantic import JsonValue

from layerwatch import wire
from layerwatch_server.errors import InvalidQuery

MAX_CONFIG_FILTERS = 16
MAX_KEY_LENGTH = wire.MAX_NAME_LENGTH
MAX_VALUE_LENGTH = 4096
_MISSING = object()


@dataclass(frozen=True)
class ConfigFilter:
    """Runs whose config holds ``value`` at ``key`` (dotted keys reach nested values)."""

    key: str
    value: JsonValue

    def matches(self, config: dict[str, JsonValue]) -> bool:
        found = _lookup(config, self.key)
        return found is not _MISSING and _same(found, self.value)


def parse_config_filters(texts: list[str]) -> list[ConfigFilter]:
    """``["lr:0.1", 'opt:"adam"']`` -> filters; a value that is not JSON is a string.

    The key ends at the first ``:``. Raises `InvalidQuery` naming the parameter.
    """
    if len(texts) > MAX_CONFIG_FILTERS:
        raise InvalidQuery(f"`config`: at most {MAX_CONFIG_FILTERS} filters, not {len(texts)}")
    filters = []
    for text in texts:
        key, colon, raw = text.partition(":")
        if not colon:
            raise InvalidQuery(f"`config`: `{text[:100]}` is not `<key>:<json value>`")
        if not key:
            raise InvalidQuery(f"`config`: the key of `{text[:100]}` is empty")
        if len(key) > MAX_KEY_LENGTH:
            raise InvalidQuery(f"`config`: a key is longer than {MAX_KEY_LENGTH} characters")
        if len(raw) > MAX_VALUE_LENGTH:
            raise InvalidQuery(f"`config`: a value is longer than {MAX_VALUE_LENGTH} characters")
        filters.append(ConfigFilter(key, _json_or_string(raw)))
    return filters


def _json_or_string(raw: str) -> JsonValue:
    try:
        value: JsonValue = json.loads(raw)
    except (ValueError, RecursionError):
        return raw
    return value


def _lookup(config: JsonValue, key: str) -> object:
    """The value at ``key``: a top-level key as it is, else a dotted path of keys or indices."""
    if isinstance(config, dict) and key in config:
        return config[key]
    node: object = config
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _same(stored: object, wanted: object) -> bool:
    """JSON equality: 1 equals 1.0, but neither equals true (Python's `True == 1`)."""
    if isinstance(stored, bool) or isinstance(wanted, bool):
        return type(stored) is type(wanted) and stored == wanted
    if isinstance(stored, int | float) and isinstance(wanted, int | float):
        return stored == wanted
    if isinstance(stored, list) and isinstance(wanted, list):
        return len(stored) == len(wanted) and all(map(_same, stored, wanted))
    if isinstance(stored, dict) and isinstance(wanted, dict):
        return stored.keys() == wanted.keys() and all(_same(stored[k], wanted[k]) for k in stored)
    return type(stored) is type(wanted) and stored == wanted
