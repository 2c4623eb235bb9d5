"""`Outbox`: what the spooler thread hands the sender thread, and what became of it.

The spooler seals records into batches and pushes them here; the sender takes the
oldest, and pops it once the server has it or refused it for good. Both threads
share the spool and the accounting, so every method takes one lock; none holds it
across a request, so a server that hangs never keeps a record out of the spool.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping

import pydantic

from layerwatch import wire
from layerwatch.delivery.batching import build_batch, count_records, split_batch
from layerwatch.delivery.counters import Counters
from layerwatch.delivery.probes import ProbeQueue
from layerwatch.delivery.spool.base import Outgoing, Spool
from layerwatch.distributed import current_rank
from layerwatch.logs import OnceLog
from layerwatch.records import Record, TensorMeta

__all__ = ["Outbox"]


class Outbox:
    """The spool of built batches and the probe queue, shared by the delivery threads."""

    def __init__(
        self,
        spool: Spool,
        tensors: Mapping[tuple[str, wire.Kind], TensorMeta],
        log_once: OnceLog,
    ) -> None:
        self._spool = spool
        self._tensors = tensors
        self._log_once = log_once
        self._lock = threading.Lock()
        self.probes = ProbeQueue()
        # Set when there is something new to send: the sender waits on it.
        self.work = threading.Event()
        self._described: set[tuple[str, wire.Kind]] = set()
        self._seq = 0
        self._sent = 0
        self._dropped = 0
        self._failed_batches = 0

    def counters(self, queue_dropped: int) -> Counters:
        spool, probes = self._spool, self.probes
        return Counters(
            sent=self._sent,
            dropped=self._dropped + queue_dropped + spool.discarded + probes.dropped,
            failed_batches=self._failed_batches,
            spooled=spool.spooled + probes.spooled,
        )

    @property
    def spool(self) -> Spool:
        return self._spool

    def use_spool(self, spool: Spool) -> None:
        """Called by the spooler thread at its start, before anything was sealed."""
        with self._lock:
            self._spool = spool

    # -- the spooler's side -------------------------------------------------------

    def seal(self, items: list[Record]) -> int:
        """Build one batch of `items` into the spool; return the last sequence number
        sealed (a flush waits until the batches up to it are settled)."""
        with self._lock:
            if items:
                self._seal(items)
            return self._seq

    def _seal(self, items: list[Record]) -> None:
        batch, kept = build_batch(
            items, rank=current_rank(), tensors=self._tensors, described=self._described,
            on_invalid=self._invalid,
        )  # fmt: skip
        self._dropped += sum(item.rows for item in items) - kept
        if batch is None:
            return
        self._seq += 1
        for evicted in self._spool.push(Outgoing(seq=self._seq, batch=batch, records=kept)):
            self._log_once("evict", logging.WARNING, "too much unsent data; dropping the oldest")
            self._give_up(evicted)
        self.work.set()

    def _invalid(self, model: str, exc: pydantic.ValidationError) -> None:
        self._log_once(f"invalid {model}", logging.WARNING, f"dropping invalid data: {exc}")

    def drop(self, rows: int) -> None:
        """Count records given up before they became a batch."""
        with self._lock:
            self._dropped += rows

    def settled_upto(self) -> float:
        """Sequence number up to which every batch is settled; -1 while probes wait
        (a flush also waits for the probes queued before it)."""
        with self._lock:
            if len(self.probes):
                return -1
            oldest = self._spool.peek()
            return math.inf if oldest is None else oldest.seq - 1

    # -- the sender's side --------------------------------------------------------

    def __len__(self) -> int:
        with self._lock:
            return len(self._spool)

    def oldest(self) -> Outgoing | None:
        """The batch to send next, with its JSON body made once (a retry sends the same
        bytes, so the server knows it by its id)."""
        with self._lock:
            outgoing = self._spool.peek()
        if outgoing is not None and outgoing.body is None:
            outgoing.body = outgoing.batch.body()
        return outgoing

    def delivered(self, rows: int, outgoing: Outgoing | None = None) -> None:
        """The server took `outgoing` (the oldest batch), or a probe of `rows` rows."""
        with self._lock:
            if outgoing is not None:
                self._spool.pop()
            self._sent += rows

    def split_oldest(self) -> bool:
        """Replace the oldest batch (answered 413) by its two halves; False if it is one
        record, which cannot be split."""
        with self._lock:
            outgoing = self._spool.peek()
            if outgoing is None or outgoing.records <= 1:
                return False
            self._spool.pop()
            self._spool.push_front([
                Outgoing(seq=outgoing.seq, batch=half, records=count_records(half))
                for half in split_batch(outgoing.batch)
            ])  # fmt: skip
            return True

    def give_up_oldest(self) -> None:
        with self._lock:
            if self._spool.peek() is not None:
                self._give_up(self._spool.pop())

    def give_up_probe(self, rows: int) -> None:
        with self._lock:
            self._dropped += rows

    def give_up_all(self) -> None:
        """The run can never be delivered: give up every batch and probe."""
        with self._lock:
            while len(self._spool):
                self._give_up(self._spool.pop())
        self.probes.drop_all()

    def close(self, status: wire.RunStatus | None) -> None:
        """At the end, once the spooler stopped: a durable spool keeps its batches (and
        `status`, when the server did not take it); a memory one gives them up."""
        self.probes.close()  # those on disk stay there for the next process or sync
        with self._lock:
            for outgoing in self._spool.close(status):
                self._give_up(outgoing)

    def _give_up(self, outgoing: Outgoing) -> None:
        self._dropped += outgoing.records
        self._failed_batches += 1
        # Its tensors' descriptions were lost with it: describe them again.
        self._described.difference_update((t.name, t.kind) for t in outgoing.batch.tensors)
