"""The client's logger, and `OnceLog`: a problem that repeats every step is logged
once at its level, then at DEBUG, so training output stays readable."""

from __future__ import annotations

import logging

__all__ = ["OnceLog", "logger"]

logger = logging.getLogger("layerwatch")


class OnceLog:
    """Log the first message of each key at its level, later ones at DEBUG."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def __call__(self, key: str, level: int, message: str, *, exc_info: bool = False) -> None:
        first = key not in self._seen
        self._seen.add(key)
        logger.log(level if first else logging.DEBUG, "layerwatch: %s", message, exc_info=exc_info)
