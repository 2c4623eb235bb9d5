"""`Spool`: where built batches wait until the server takes them, oldest first.

`MemorySpool` (`memory.py`) holds them in memory within a bound and loses them
with the process; `DiskSpool` (`disk.py`) keeps them on disk, where
`layerwatch sync` finds what a run left behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from layerwatch import wire

__all__ = ["Outgoing", "Spool"]


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
