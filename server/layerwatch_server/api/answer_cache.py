"""Rendered plots (and their JSON twins) kept in memory, keyed by their ETag.

A dashboard reload, or a second user opening the same run, asks for the same
view at the same data version without an ``If-None-Match``: rendering it again
costs hundreds of milliseconds, answering from here a lookup. The ETag names the
view, its parameters and the run's data version, so an entry never goes stale:
new data makes a new ETag. The cache is bounded in bytes; the least recently
used answers go first. Each server process keeps its own (several workers: each
its own cache, none shared).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class CachedAnswer:
    body: bytes
    media_type: str
    downsampled: bool


class AnswerCache:
    """At most ``max_bytes`` of answer bodies, least recently used evicted first."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._bytes = 0
        self._entries: OrderedDict[str, CachedAnswer] = OrderedDict()
        self._lock = threading.Lock()  # renders finish on worker threads

    def get(self, etag: str) -> CachedAnswer | None:
        with self._lock:
            answer = self._entries.get(etag)
            if answer is not None:
                self._entries.move_to_end(etag)
            return answer

    def put(self, etag: str, answer: CachedAnswer) -> None:
        size = len(answer.body)
        if size > self._max_bytes // 4:  # one huge answer must not empty the cache
            return
        with self._lock:
            old = self._entries.pop(etag, None)
            if old is not None:
                self._bytes -= len(old.body)
            self._entries[etag] = answer
            self._bytes += size
            while self._bytes > self._max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= len(evicted.body)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)
