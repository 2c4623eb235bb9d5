"""`Sender`: the thread that delivers the outbox's batches and probes to the server.

It first creates the run (idempotent: the client chose the id), then sends the
oldest batch, then probes, one request at a time and each with the same bytes
and `batch_id` until the server has it or refuses it for good, so a retry is
stored once. A 413 splits the batch; a 404 `run_not_found` creates the run again
(once per batch); other refusals give the batch up and count it.

Failures back off (`Backoff`). A server that cannot be reached (no connection, a
timeout) is asked `GET /readyz` about once a second until it answers, and the
backlog drains at once: an outage costs about a second after the server returns.
An idle sender sends a heartbeat, so the server can tell a run that is quiet
from one whose process died. Records keep reaching the spool meanwhile: that is
the spooler's thread, not this one.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from typing import Literal

import httpx

from layerwatch import wire
from layerwatch.delivery.backoff import Backoff
from layerwatch.delivery.outbox import Outbox
from layerwatch.delivery.transport import send
from layerwatch.errors import (
    DeliveryError,
    PayloadTooLargeError,
    RejectedError,
    RetryableError,
    RunNotFoundError,
)
from layerwatch.logs import OnceLog, logger

__all__ = ["HEARTBEAT_SECS", "Sender"]

HEARTBEAT_SECS = 30.0
"""An idle run tells the server it is alive this often (it declares a run crashed
after `LAYERWATCH_RUN_TIMEOUT_SECONDS` of silence, 300 by default)."""

_READY_POLL = 1.0  # seconds between `/readyz` questions to a server that was unreachable
_IDLE_WAIT = 0.5  # seconds; how often an idle sender looks at the stop flag


class Sender:
    """Daemon thread delivering an `Outbox` to the server."""

    def __init__(
        self,
        *,
        http: httpx.Client,
        server: str,
        run: wire.RunCreate,
        outbox: Outbox,
        backoff: float,
        log_once: OnceLog,
        name: str,
        spooled: threading.Event,
        max_backoff: float = 30.0,
        heartbeat_secs: float = HEARTBEAT_SECS,
        # Create the run only once a batch gets 404: resuming it would set it running.
        run_exists: bool = False,
    ) -> None:
        assert run.id is not None
        self._http = http
        self._server = server
        self._run = run
        self._runs_url = f"{server}/api/v1/runs"
        self._run_url = f"{server}/api/v1/runs/{run.id}"
        self._outbox = outbox
        self._backoff = Backoff(backoff, max_backoff)
        self._log_once = log_once
        self._spooled = spooled  # set when the spooler is done: the spool may close
        self._heartbeat_secs = heartbeat_secs
        self._stop = threading.Event()
        self._stop_status: wire.RunStatus | None = None
        self._skipped_captures: int | None = None  # reported with the final status
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        # Below: touched only by the sender thread.
        # "denied": the server refused our token (401/403): nothing more is sent, the
        # spool keeps everything for a `layerwatch sync` with the right token.
        self._run_state: Literal["new", "created", "refused", "denied"] = (
            "created" if run_exists else "new"
        )
        self._missing = False  # the run was created again after a 404 for the oldest batch
        self._unreachable = False  # the last failure had no answer: ask /readyz first
        self._last_contact = time.monotonic()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def stop(
        self, status: wire.RunStatus | None, timeout: float, *, skipped_captures: int | None = None
    ) -> None:
        """Stop sending; set the run's `status` (and `skipped_captures`) on the server and
        close the spool once the spooler is done. Waits at most `timeout` seconds: a
        thread stuck in a request is a daemon, and the spool on disk keeps what it holds."""
        self._stop_status = status
        self._skipped_captures = skipped_captures
        self._stop.set()
        self._outbox.work.set()
        self._thread.join(timeout)

    # -- the thread -------------------------------------------------------------

    def _main(self) -> None:
        """Called on the sender thread: the loop, then the final status update."""
        while not self._stop.is_set():
            try:
                self._cycle()
            except Exception:  # a bug must not end delivery: the oldest batch may be the cause
                self._log_once("sender", logging.ERROR, "sender error; dropping a batch",
                               exc_info=True)  # fmt: skip
                self._outbox.give_up_oldest()
                self._stop.wait(0.1)
        try:
            self._finish()
        except Exception:
            logger.debug("layerwatch: could not finish run %s", self._run.id, exc_info=True)

    def _cycle(self) -> None:
        outbox = self._outbox
        outbox.work.clear()  # cleared before looking: a batch sealed meanwhile sets it again
        now = time.monotonic()
        if not self._backoff.ready(now):
            outbox.work.wait(min(self._backoff.next_attempt - now, _IDLE_WAIT))
            return
        try:
            if self._unreachable:
                self._ask_ready()
            if self._run_state == "new":
                self._create_run()
            if self._run_state == "refused":  # nothing can ever be delivered
                outbox.give_up_all()
            elif self._run_state == "denied":
                outbox.work.wait(_IDLE_WAIT)
            elif self._run_state == "created" and not self._send_one():
                self._heartbeat(now)
                beat = self._last_contact + self._heartbeat_secs - time.monotonic()
                outbox.work.wait(min(max(beat, 0.0), _IDLE_WAIT))
        except RetryableError as exc:
            self._back_off(exc)

    def _send_one(self) -> bool:
        """Send the oldest batch, else the oldest probe; False when there is neither."""
        outgoing = self._outbox.oldest()
        if outgoing is not None:
            assert outgoing.body is not None
            try:
                self._request("POST", f"{self._run_url}/batches", outgoing.body)
            except RejectedError as exc:
                self._refused(exc)
            else:
                self._outbox.delivered(outgoing.records, outgoing)
                self._missing = False
            return True
        pending = self._outbox.probes.head()
        if pending is None:
            return False
        try:
            self._request("POST", f"{self._run_url}/probes", pending.json())
        except RejectedError as exc:
            if self._denied(exc):
                return True
            if isinstance(exc, PayloadTooLargeError) and self._outbox.probes.split(pending):
                return True
            self._log_once(f"probe {exc.status_code}", logging.WARNING, f"probe refused: {exc}")
            self._outbox.give_up_probe(pending.rows)
        else:
            self._outbox.delivered(pending.rows)
        self._outbox.probes.settle(pending)
        return True

    def _refused(self, exc: RejectedError) -> None:
        if self._denied(exc):
            return
        if isinstance(exc, PayloadTooLargeError) and self._outbox.split_oldest():
            return
        if isinstance(exc, RunNotFoundError):
            if not self._missing:  # the server lost the run: create it again, then retry
                self._missing = True
                self._run_state = "new"
                return
            self._missing = False  # once per batch
        self._log_once(f"refused {exc.status_code}", logging.WARNING, f"batch refused: {exc}")
        self._outbox.give_up_oldest()

    def _create_run(self) -> None:
        try:
            self._request("POST", self._runs_url, self._run.model_dump_json().encode())
        except RejectedError as exc:
            if self._denied(exc):
                return
            self._run_state = "refused"
            logger.error("layerwatch: server refused to create run %s: %s", self._run.id, exc)
            return
        self._run_state = "created"

    def _heartbeat(self, now: float) -> None:
        """Tell the server the run is alive when nothing else did for a while."""
        if now - self._last_contact < self._heartbeat_secs:
            return
        try:
            self._request("POST", f"{self._run_url}/heartbeat", b"")
        except RunNotFoundError:
            self._run_state = "new"
        except RejectedError as exc:  # e.g. a server without heartbeats: stay quiet
            if self._denied(exc):
                return
            self._log_once("heartbeat", logging.DEBUG, f"heartbeat refused: {exc}")
            self._last_contact = now

    def _denied(self, exc: RejectedError) -> bool:
        """A 401 or 403 is permanent: stop sending, keep everything, say so once."""
        if exc.status_code not in (401, 403):
            return False
        self._run_state = "denied"
        where = getattr(self._outbox.spool, "directory", None)
        kept = (
            f"unsent data stays in {where}; `LAYERWATCH_TOKEN=<a token with write access> "
            "layerwatch sync` delivers it"
            if where is not None
            else "unsent data is kept in memory only and is lost at exit"
        )
        logger.error(
            "layerwatch: %s refused the token for run %s (%s %s); nothing more is sent; %s",
            self._server, self._run.id, exc.status_code, exc.code or "", kept,
        )  # fmt: skip
        return True

    def _ask_ready(self) -> None:
        """Ask the unreachable server whether it is back: cheap, and a hung server costs
        one read timeout rather than a batch's."""
        # A refusal is an answer too (a proxy, an old server): it is reachable.
        with contextlib.suppress(RejectedError):
            send(self._http, "GET", f"{self._server}/readyz")
        self._unreachable = False

    def _request(self, method: str, url: str, body: bytes) -> None:
        send(self._http, method, url, body=body if body else None)
        self._last_contact = time.monotonic()
        failures = self._backoff.succeeded()
        if failures:
            logger.info("layerwatch: delivering to %s again after %d failures",
                        self._server, failures)  # fmt: skip

    def _back_off(self, exc: RetryableError) -> None:
        delay = self._backoff.failed(exc.retry_after)
        if exc.status_code is None:  # no answer: ask /readyz often, not the batch again
            self._unreachable = True
            poll = _READY_POLL * random.uniform(0.5, 1.0)
            self._backoff.next_attempt = time.monotonic() + min(delay, poll)
        level = logging.WARNING if self._backoff.failures == 1 else logging.DEBUG
        logger.log(level, "layerwatch: cannot deliver to %s (%s); retrying", self._server, exc)

    def _finish(self) -> None:
        """Called on the sender thread when stopping: set the status, then close the spool
        (a durable one keeps what is left, and the status the server did not take)."""
        status = None if self._run_state == "refused" else self._stop_status
        if self._run_state == "created" and status is not None:
            update = wire.RunUpdate(status=status, skipped_captures=self._skipped_captures)
            update_json = update.model_dump_json(exclude_none=True).encode()
            try:
                self._request("PATCH", self._run_url, update_json)
                status = None
            except DeliveryError as exc:
                logger.warning("layerwatch: could not mark run %s %s: %s",
                               self._run.id, status, exc)  # fmt: skip
        if not self._spooled.wait(_IDLE_WAIT):  # the spooler is stuck: leave the spool be
            return
        if self._run_state == "refused":
            self._outbox.give_up_all()
        self._outbox.close(status)
