"""Batches built but not yet taken by the server, oldest first.

`MemorySpool` holds them in memory within a bound and loses them with the
process; `layerwatch.diskspool.DiskSpool` keeps them on disk, where
`layerwatch sync` finds what a run left behind.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Protocol

from layerwatch import wire

__all__ = ["MemorySpool", "Outgoing", "Spool"]


@dataclass(eq=False)
class Outgoing:
    """A built batch waiting for the server, with what is needed to account for it."""

    seq: int  # order of sealing; the halves of a split batch keep their parent's
    batch: wire.Batch
    records: int
    body: bytes | None = None  # JSON, cached so a retry sends the same bytes


class Spool(Protocol):
    """Storage of batches not yet taken by the server, oldest first.

    Only the sender thread calls its methods; `spooled` and `discarded` may be
    read from any thread.
    """

    def __len__(self) -> int: ...

    @property
    def spooled(self) -> int:
        """Records held on disk, which outlive the process (`layerwatch sync` sends them)."""
        ...

    @property
    def discarded(self) -> int:
        """Records found unreadable in storage and skipped."""
        ...

    def push(self, outgoing: Outgoing) -> list[Outgoing]:
        """Add `outgoing` last; return the batches evicted to stay within bounds."""
        ...

    def push_front(self, batches: list[Outgoing]) -> None:
        """Put `batches` first, in order (the halves of a split batch)."""
        ...

    def peek(self) -> Outgoing | None:
        """The oldest batch, left in place; None when empty."""
        ...

    def pop(self) -> Outgoing:
        """Remove and return the oldest batch (after it was sent or given up)."""
        ...

    def close(self, status: wire.RunStatus | None = None) -> list[Outgoing]:
        """Called when the sender stops; returns the batches that end with the process.

        `status` is the run's final status when the server has not taken it: a
        durable spool keeps it for `layerwatch sync`.
        """
        ...


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
