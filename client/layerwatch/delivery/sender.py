"""The sender thread: drain the buffer, build batches, POST them, back off on failure.

One daemon thread per `Run`. It first creates the run on the server (the request is
idempotent: the client chose the id), then loops: collect records until a batch is
full or `flush_secs` pass, read all their tensors back with one device-to-host copy
per device, group them into columnar `wire.Stats` / `wire.Scalars` blocks, and POST
the `wire.Batch`. Failed deliveries stay in the spool and are retried with
exponential backoff and jitter (or after the server's `Retry-After`), with the same
`batch_id`, so the server can tell a retry from new data. Nothing here raises into
the training thread: problems are logged and counted. With a durable spool
(`DiskSpool`, opened on this thread), what is not delivered when the sender stops
stays on disk for `layerwatch sync`, which replays it with this same class.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Literal

import httpx
import pydantic

from layerwatch import wire
from layerwatch.delivery.backoff import Backoff
from layerwatch.delivery.batching import build_batch, count_records, split_batch
from layerwatch.delivery.counters import Counters
from layerwatch.delivery.probes import ProbeQueue
from layerwatch.delivery.queue import Buffer, FlushRequest, Wake
from layerwatch.delivery.spool.base import Outgoing, Spool
from layerwatch.delivery.spool.memory import MemorySpool
from layerwatch.delivery.transport import send
from layerwatch.distributed import current_rank
from layerwatch.errors import (
    DeliveryError,
    PayloadTooLargeError,
    RejectedError,
    RetryableError,
    RunNotFoundError,
)
from layerwatch.logs import OnceLog, logger
from layerwatch.records import ModelRecord, Record, ScalarRecord, SummaryRecord, TensorMeta

__all__ = ["Sender"]


_IDLE_WAIT = 0.5  # seconds; how often an idle sender looks at the stop flag


class Sender:
    """Daemon thread delivering the buffer's records to the server as `wire.Batch`es."""

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
        max_backoff: float = 60.0,
        spool: Spool | None = None,
        # Called on the thread, keeping disk work off the training thread; if it fails,
        # `spool` stays in use.
        open_spool: Callable[[], Spool] | None = None,
        # Create the run only once a batch gets 404: resuming it would set it running.
        run_exists: bool = False,
    ) -> None:
        assert run.id is not None
        self._http = http
        self._server = server
        self._run = run
        self._runs_url = f"{server}/api/v1/runs"
        self._run_url = f"{server}/api/v1/runs/{run.id}"
        self._buffer = buffer
        self._tensors = tensors
        self._flush_secs = flush_secs
        self._batch_size = batch_size
        self._backoff = Backoff(backoff, max_backoff)
        self._spool: Spool = spool if spool is not None else MemorySpool(100 * batch_size)
        self._open_spool = open_spool
        self._stop = threading.Event()
        self._stop_status: wire.RunStatus | None = None
        self._thread = threading.Thread(
            target=self._main, name=f"layerwatch-sender-{run.id[:8]}", daemon=True
        )
        # Below: touched only by the sender thread (the counters are read elsewhere).
        self._items: list[Record] = []
        self._items_deadline = math.inf
        self._waiting: list[FlushRequest] = []
        self._seq = 0
        self._run_state: Literal["new", "created", "refused"] = "created" if run_exists else "new"
        self._missing = False  # the run was created again after a 404 for the oldest batch
        self._described: set[tuple[str, wire.Kind]] = set()
        self._log_once = OnceLog()
        self._sent = 0
        self._dropped = 0
        self._failed_batches = 0
        # Probe payloads: big and rare, so a queue of their own; they go after the
        # batches waiting, and onto disk beside them when the spool is there.
        self._probes = ProbeQueue()

    @property
    def counters(self) -> Counters:
        spool = self._spool
        return Counters(
            sent=self._sent,
            dropped=self._dropped + self._buffer.dropped + spool.discarded + self._probes.dropped,
            failed_batches=self._failed_batches,
            spooled=spool.spooled + self._probes.spooled,
        )

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def submit_probe(self, probe: wire.Probe, nbytes: int) -> bool:
        """Queue a probe payload of about `nbytes`; drop and count it past the bound."""
        if not self._probes.submit(probe, nbytes):
            self._log_once("probes", logging.WARNING, "too many probes waiting; dropping")
            return False
        self._buffer.put_control(_WAKE, 0)
        return True

    def flush(self, timeout: float) -> bool:
        """Wait until every record queued before this call is sent or given up."""
        deadline = time.monotonic() + timeout
        if not self._thread.is_alive():
            return False
        request = FlushRequest()
        if not self._buffer.put_control(request, _remaining(deadline)):
            return False
        return request.done.wait(_remaining(deadline))

    def stop(self, status: wire.RunStatus | None, timeout: float) -> None:
        """Stop the thread: drop what is left, then set the run's `status` on the server.

        Waits at most `timeout` seconds; a thread stuck in a request is a daemon.
        """
        self._stop_status = status
        self._stop.set()
        self._buffer.put_control(_WAKE, 0)
        self._thread.join(timeout)

    # -- the thread -------------------------------------------------------------

    def _main(self) -> None:
        """Called on the sender thread: the loop, then the final status update."""
        if self._open_spool is not None:
            try:
                self._spool = self._open_spool()
            except Exception as exc:  # e.g. a read-only home: carry on in memory
                logger.warning("layerwatch: cannot use the on-disk spool (%s); unsent data "
                               "is kept in memory only", exc)  # fmt: skip
        directory = getattr(self._spool, "directory", None)
        if directory is not None:  # a durable spool: probes go beside its batches
            self._probes.keep_on_disk(directory)
        while not self._stop.is_set():
            try:
                self._cycle()
            except Exception:  # a bug must not end delivery: drop what is in hand, go on
                self._log_once(
                    "cycle", logging.ERROR, "sender error; dropping records", exc_info=True
                )
                self._drop_items(self._items)
                if self._spool.peek() is not None:  # it may be the cause: never loop on it
                    self._give_up(self._spool.pop())
                self._stop.wait(0.1)
        try:
            self._finish()
        except Exception:
            logger.debug("layerwatch: could not finish run %s", self._run.id, exc_info=True)

    def _cycle(self) -> None:
        self._collect(self._wait_time(time.monotonic()))
        now = time.monotonic()
        if self._items and (len(self._items) >= self._batch_size or now >= self._items_deadline):
            self._seal()
        self._probes.persist()
        if self._backoff.ready(now):
            self._deliver_one()
        self._release_flushes()

    def _wait_time(self, now: float) -> float:
        deadlines = []
        if self._items:
            deadlines.append(self._items_deadline)
        if len(self._spool) or len(self._probes) or self._run_state == "new":
            deadlines.append(self._backoff.next_attempt)
        if not deadlines:
            return _IDLE_WAIT
        return min(max(min(deadlines) - now, 0.0), _IDLE_WAIT)

    def _collect(self, timeout: float) -> None:
        item = self._buffer.get(timeout)
        while item is not None:
            if isinstance(item, _RECORDS):
                if not self._items:
                    self._items_deadline = time.monotonic() + self._flush_secs
                self._items.append(item)
                if len(self._items) >= self._batch_size:
                    return
            elif isinstance(item, FlushRequest):
                self._seal()
                item.upto = self._seq
                self._waiting.append(item)
            item = self._buffer.get(0)

    def _seal(self) -> None:
        """Turn the collected records into a batch in the spool."""
        items, self._items, self._items_deadline = self._items, [], math.inf
        if not items:
            return
        batch, kept = build_batch(
            items, rank=current_rank(), tensors=self._tensors, described=self._described,
            on_invalid=self._invalid,
        )  # fmt: skip
        self._dropped += sum(item.rows for item in items) - kept
        if batch is None:
            return
        self._seq += 1
        outgoing = Outgoing(seq=self._seq, batch=batch, records=kept)
        for evicted in self._spool.push(outgoing):
            self._log_once("evict", logging.WARNING, "too much unsent data; dropping the oldest")
            self._give_up(evicted)

    def _invalid(self, model: str, exc: pydantic.ValidationError) -> None:
        self._log_once(f"invalid {model}", logging.WARNING, f"dropping invalid data: {exc}")

    def _deliver_one(self) -> None:
        """Create the run if needed, then send the oldest batch; on failure, back off."""
        try:
            if self._run_state == "new":
                self._create_run()
            outgoing = self._spool.peek()
            if outgoing is not None and self._run_state == "created":
                self._send(outgoing)
            elif len(self._probes) and self._run_state == "created":
                self._send_probe()
        except RetryableError as exc:
            self._back_off(exc)
            return
        if self._run_state == "refused":  # nothing can ever be delivered
            while len(self._spool):
                self._give_up(self._spool.pop())
            self._probes.drop_all()

    def _create_run(self) -> None:
        try:
            self._request("POST", self._runs_url, self._run.model_dump_json().encode())
        except RejectedError as exc:
            self._run_state = "refused"
            logger.error("layerwatch: server refused to create run %s: %s", self._run.id, exc)
            return
        self._run_state = "created"
        self._recovered()

    def _send(self, outgoing: Outgoing) -> None:
        if outgoing.body is None:
            outgoing.body = outgoing.batch.model_dump_json().encode()
        try:
            self._request("POST", f"{self._run_url}/batches", outgoing.body)
        except RejectedError as exc:
            self._refused(exc)
            return
        self._spool.pop()
        self._sent += outgoing.records
        self._missing = False
        self._recovered()

    def _send_probe(self) -> None:
        pending = self._probes.head()
        assert pending is not None
        try:
            self._request("POST", f"{self._run_url}/probes", pending.json())
        except RejectedError as exc:
            if isinstance(exc, PayloadTooLargeError) and self._probes.split(pending):
                return
            self._log_once(f"probe {exc.status_code}", logging.WARNING, f"probe refused: {exc}")
            self._dropped += pending.rows
        else:
            self._sent += pending.rows
            self._recovered()
        self._probes.settle(pending)

    def _refused(self, exc: RejectedError) -> None:
        outgoing = self._spool.pop()
        if isinstance(exc, PayloadTooLargeError) and outgoing.records > 1:
            halves = [
                Outgoing(seq=outgoing.seq, batch=half, records=count_records(half))
                for half in split_batch(outgoing.batch)
            ]
            self._spool.push_front(halves)
            return
        if isinstance(exc, RunNotFoundError):
            if not self._missing:  # the server lost the run: create it again, then retry
                self._missing = True
                self._run_state = "new"
                self._spool.push_front([outgoing])
                return
            self._missing = False  # once per batch
        self._log_once(f"refused {exc.status_code}", logging.WARNING, f"batch refused: {exc}")
        self._give_up(outgoing)

    def _request(self, method: str, url: str, body: bytes) -> None:
        send(self._http, method, url, body=body)

    def _back_off(self, exc: RetryableError) -> None:
        self._backoff.failed(exc.retry_after)
        level = logging.WARNING if self._backoff.failures == 1 else logging.DEBUG
        logger.log(level, "layerwatch: cannot deliver to %s (%s); retrying", self._server, exc)

    def _recovered(self) -> None:
        failures = self._backoff.succeeded()
        if failures:
            logger.info("layerwatch: delivering to %s again after %d failures",
                        self._server, failures)  # fmt: skip

    def _give_up(self, outgoing: Outgoing) -> None:
        self._dropped += outgoing.records
        self._failed_batches += 1
        self._described.difference_update((t.name, t.kind) for t in outgoing.batch.tensors)

    def _drop_items(self, items: list[Record]) -> None:
        self._dropped += sum(item.rows for item in items)
        items.clear()

    def _release_flushes(self) -> None:
        if not self._waiting:
            return
        oldest = self._spool.peek()
        settled_upto = math.inf if oldest is None else oldest.seq - 1
        if len(self._probes):  # a flush also waits for the probes queued before it
            return
        for request in [r for r in self._waiting if r.upto <= settled_upto]:
            request.done.set()
            self._waiting.remove(request)

    def _finish(self) -> None:
        """Called on the sender thread when stopping: keep or count what is left, set the
        status, close the spool (a durable one keeps the status the server did not take)."""
        while (item := self._buffer.get(0)) is not None:
            if isinstance(item, _RECORDS):
                self._items.append(item)
            elif isinstance(item, FlushRequest):
                item.done.set()
        if self._run_state == "refused":  # nothing can ever be delivered
            self._drop_items(self._items)
            while len(self._spool):
                self._give_up(self._spool.pop())
        self._seal()  # a durable spool keeps the batch; closing a memory one gives it up
        if self._run_state == "refused":
            self._probes.drop_all()
        self._probes.close()  # those on disk stay there for the next process or sync
        for request in self._waiting:
            request.done.set()
        status = None if self._run_state == "refused" else self._stop_status
        if self._run_state == "created" and status is not None:
            update = wire.RunUpdate(status=status).model_dump_json().encode()
            try:
                self._request("PATCH", self._run_url, update)
                status = None
            except DeliveryError as exc:
                logger.warning("layerwatch: could not mark run %s %s: %s",
                               self._run.id, status, exc)  # fmt: skip
        for outgoing in self._spool.close(status):
            self._give_up(outgoing)


_WAKE = Wake()
_RECORDS = (SummaryRecord, ScalarRecord, ModelRecord)


def _remaining(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.0)
