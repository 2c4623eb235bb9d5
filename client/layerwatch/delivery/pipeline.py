"""`Delivery`: one run's way to the server: a spooler thread and a sender thread
around the `Outbox` they share.

The training thread only puts records on the bounded `Buffer` (never waiting).
The spooler moves them into the spool, the sender moves the spool to the server;
neither waits for the other, so a slow or hung server fills the spool (on disk,
bounded) instead of the queue.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

import httpx

from layerwatch import wire
from layerwatch.delivery.counters import Counters
from layerwatch.delivery.outbox import Outbox
from layerwatch.delivery.queue import Buffer, FlushRequest
from layerwatch.delivery.sender import HEARTBEAT_SECS, Sender
from layerwatch.delivery.spool.base import Spool
from layerwatch.delivery.spool.memory import MemorySpool
from layerwatch.delivery.spooler import Spooler
from layerwatch.logs import OnceLog
from layerwatch.records import TensorMeta

__all__ = ["Delivery"]


class Delivery:
    """Delivers the records put on `buffer` to the server, in two daemon threads."""

    def __init__(
        self,
        *,
        http: httpx.Client,
        server: str,
        run: wire.RunCreate,
        buffer: Buffer,
        tensors: Mapping[tuple[str, wire.Kind], TensorMeta],
        flush_secs: float,
        batch_size: int,
        backoff: float,
        spool: Spool | None = None,
        open_spool: Callable[[], Spool] | None = None,
        run_exists: bool = False,
        heartbeat_secs: float = HEARTBEAT_SECS,
    ) -> None:
        assert run.id is not None
        self._buffer = buffer
        self._log_once = OnceLog()
        # Without a disk spool, unsent batches wait in memory: as many records as the
        # queue holds, and at least 100 batches' worth, so an outage of a few seconds
        # at full rate loses nothing.
        memory = spool if spool is not None else MemorySpool(max(buffer.maxsize, 100 * batch_size))
        self._outbox = Outbox(memory, tensors, self._log_once)
        self._spooler = Spooler(
            buffer=buffer, outbox=self._outbox, flush_secs=flush_secs, batch_size=batch_size,
            log_once=self._log_once, name=f"layerwatch-spooler-{run.id[:8]}",
            open_spool=open_spool,
        )  # fmt: skip
        self._sender = Sender(
            http=http, server=server, run=run, outbox=self._outbox, backoff=backoff,
            log_once=self._log_once, name=f"layerwatch-sender-{run.id[:8]}",
            spooled=self._spooler.done, heartbeat_secs=heartbeat_secs, run_exists=run_exists,
        )  # fmt: skip

    @property
    def counters(self) -> Counters:
        """Records sent, spooled (on disk, not yet sent) and dropped, and batches given up."""
        return self._outbox.counters(self._buffer.dropped)

    @property
    def alive(self) -> bool:
        return self._spooler.alive and self._sender.alive

    def start(self) -> None:
        self._spooler.start()
        self._sender.start()

    def submit_probe(self, probe: wire.Probe, nbytes: int) -> bool:
        """Queue a probe payload of about `nbytes`; drop and count it past the bound."""
        if not self._outbox.probes.submit(probe, nbytes):
            self._log_once("probes", logging.WARNING, "too many probes waiting; dropping")
            return False
        self._outbox.work.set()
        return True

    def flush(self, timeout: float) -> bool:
        """Wait until every record queued before this call is sent or given up."""
        deadline = time.monotonic() + timeout
        if not self._spooler.alive:
            return False
        request = FlushRequest()
        if not self._buffer.put_control(request, _remaining(deadline)):
            return False
        return request.done.wait(_remaining(deadline))

    def stop(
        self, status: wire.RunStatus | None, timeout: float, *, skipped_captures: int | None = None
    ) -> None:
        """Seal what is queued, set the run's `status` (with the captures the run skipped)
        on the server and close the spool, in at most about `timeout` seconds; what the
        server has not taken stays in a durable spool for `layerwatch sync`, and is
        counted as dropped from a memory one."""
        deadline = time.monotonic() + timeout
        self._spooler.stop(timeout)
        self._sender.stop(status, _remaining(deadline), skipped_captures=skipped_captures)


def _remaining(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.0)
