"""`Spooler`: the thread that moves records from the queue into the spool.

It never talks to the server: it collects records until a batch is full or
`flush_secs` pass, builds the batch (one device-to-host copy per device) and
pushes it into the `Outbox`'s spool, on disk when there is one. So whatever the
request in flight is doing (a server that hangs, a proxy that stalls), the queue
keeps draining and nothing is dropped for want of room. It also writes probes to
disk and answers `flush()` once the sender has settled what came before.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from layerwatch.delivery.outbox import Outbox
from layerwatch.delivery.queue import Buffer, FlushRequest, Wake
from layerwatch.delivery.spool.base import Spool
from layerwatch.logs import OnceLog, logger
from layerwatch.records import ModelRecord, NonfiniteRecord, Record, ScalarRecord, SummaryRecord

__all__ = ["Spooler"]

_IDLE_WAIT = 0.5  # seconds; how often an idle spooler looks at the stop flag
_FLUSH_POLL = 0.02  # seconds; how often a flush waiting for the sender is looked at
_RECORDS = (SummaryRecord, ScalarRecord, ModelRecord, NonfiniteRecord)


class Spooler:
    """Daemon thread sealing the buffer's records into the outbox's spool."""

    def __init__(
        self,
        *,
        buffer: Buffer,
        outbox: Outbox,
        flush_secs: float,
        batch_size: int,
        log_once: OnceLog,
        name: str,
        # Called on the thread, keeping disk work off the training thread; if it fails,
        # the outbox's memory spool stays in use.
        open_spool: Callable[[], Spool] | None = None,
    ) -> None:
        self._buffer = buffer
        self._outbox = outbox
        self._flush_secs = flush_secs
        self._batch_size = batch_size
        self._log_once = log_once
        self._open_spool = open_spool
        self._stop = threading.Event()
        self.ready = threading.Event()  # the spool is open: the sender may start
        self.done = threading.Event()  # stopped with everything sealed
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        # Below: touched only by the spooler thread.
        self._items: list[Record] = []
        self._deadline = math.inf
        self._waiting: list[FlushRequest] = []

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Seal what is queued, release every flush, and end the thread."""
        self._stop.set()
        self._buffer.put_control(Wake(), 0)
        self._thread.join(timeout)

    def _main(self) -> None:
        """Called on the spooler thread: open the spool, loop, seal the rest."""
        try:
            self._open()
        finally:
            self.ready.set()
        while not self._stop.is_set():
            try:
                self._cycle()
            except Exception:  # a bug must not end delivery: drop what is in hand, go on
                self._log_once(
                    "spooler", logging.ERROR, "spooler error; dropping records", exc_info=True
                )
                self._outbox.drop(sum(item.rows for item in self._items))
                self._items.clear()
                self._stop.wait(0.1)
        try:
            self._finish()
        finally:
            for request in self._waiting:
                request.done.set()
            self.done.set()

    def _open(self) -> None:
        if self._open_spool is not None:
            try:
                self._outbox.use_spool(self._open_spool())
            except Exception as exc:  # e.g. a read-only home: carry on in memory
                logger.warning("layerwatch: cannot use the on-disk spool (%s); unsent data "
                               "is kept in memory only", exc)  # fmt: skip
        directory = getattr(self._outbox.spool, "directory", None)
        if directory is not None:  # a durable spool: probes go beside its batches
            self._outbox.probes.keep_on_disk(directory)
            self._outbox.work.set()  # a past process may have left some

    def _cycle(self) -> None:
        self._collect(self._wait_time())
        if self._items and (
            len(self._items) >= self._batch_size or time.monotonic() >= self._deadline
        ):
            self._seal()
        self._outbox.probes.persist()
        self._release_flushes()

    def _wait_time(self) -> float:
        wait = _FLUSH_POLL if self._waiting else _IDLE_WAIT
        if self._items:
            wait = min(wait, max(self._deadline - time.monotonic(), 0.0))
        return wait

    def _collect(self, timeout: float) -> None:
        item = self._buffer.get(timeout)
        while item is not None:
            if isinstance(item, _RECORDS):
                if not self._items:
                    self._deadline = time.monotonic() + self._flush_secs
                self._items.append(item)
                if len(self._items) >= self._batch_size:
                    return
            elif isinstance(item, FlushRequest):
                item.upto = self._seal()
                self._waiting.append(item)
            item = self._buffer.get(0)

    def _seal(self) -> int:
        items, self._items, self._deadline = self._items, [], math.inf
        return self._outbox.seal(items)

    def _release_flushes(self) -> None:
        if not self._waiting:
            return
        settled = self._outbox.settled_upto()
        for request in [r for r in self._waiting if r.upto <= settled]:
            request.done.set()
            self._waiting.remove(request)

    def _finish(self) -> None:
        """Called on the spooler thread when stopping: seal what is left in the queue."""
        while (item := self._buffer.get(0)) is not None:
            if isinstance(item, _RECORDS):
                self._items.append(item)
            elif isinstance(item, FlushRequest):
                item.done.set()
        while self._items:
            batch, self._items = self._items[: self._batch_size], self._items[self._batch_size :]
            self._outbox.seal(batch)
        self._outbox.probes.persist()
