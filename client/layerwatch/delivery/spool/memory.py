"""`MemorySpool`: unsent batches in memory, bounded, lost with the process."""

from __future__ import annotations

from collections import deque

from layerwatch import wire
from layerwatch.delivery.spool.base import Outgoing

__all__ = ["MemorySpool"]


class MemorySpool:
    """A `Spool` in memory holding at most `max_records` records, dropping the oldest."""

    spooled = 0  # nothing outlives the process
    discarded = 0

    def __init__(self, max_records: int) -> None:
        self._max_records = max_records
        self._batches: deque[Outgoing] = deque()
        self._records = 0

    def __len__(self) -> int:
        return len(self._batches)

    def push(self, outgoing: Outgoing) -> list[Outgoing]:
        self._batches.append(outgoing)
        self._records += outgoing.records
        evicted: list[Outgoing] = []
        while self._records > self._max_records and len(self._batches) > 1:
            evicted.append(self.pop())
        return evicted

    def push_front(self, batches: list[Outgoing]) -> None:
        for outgoing in reversed(batches):
            self._batches.appendleft(outgoing)
            self._records += outgoing.records

    def peek(self) -> Outgoing | None:
        return self._batches[0] if self._batches else None

    def pop(self) -> Outgoing:
        outgoing = self._batches.popleft()
        self._records -= outgoing.records
        return outgoing

    def close(self, status: wire.RunStatus | None = None) -> list[Outgoing]:
        left = list(self._batches)
        self._batches.clear()
        self._records = 0
        return left
