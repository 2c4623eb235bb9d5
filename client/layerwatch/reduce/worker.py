"""`Reducer`: summarise CPU tensors on a background thread, off the training thread.

On an accelerator a reduction is a few asynchronous kernel launches, so hooks run
it inline. On the CPU the same reduction would run on the training thread and add
its whole cost to the step; instead the hook takes a private copy of the tensor (a
memcpy, far cheaper than the reduction) and hands it to this thread, which runs
the reduction in parallel with training (PyTorch releases the GIL inside its
operators). The copies come from a `SnapshotPool`, so a steady run reuses the same
buffers instead of mapping fresh memory at every capture.

The copies waiting here are bounded in bytes. A watch asks `admit` before it
starts a capture and skips the whole capture (counting it) when the reducer is
that far behind, so what is stored is a consistent subsample of steps, never a
random loss of records. A slow reducer never grows memory or blocks training.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable

import torch

from layerwatch.logs import logger
from layerwatch.records import Record
from layerwatch.reduce.pool import SnapshotPool

__all__ = ["DEFAULT_MAX_PENDING_BYTES", "Job", "Reducer"]


DEFAULT_MAX_PENDING_BYTES = 32 * 1024 * 1024
"""Copies that may wait for the reducer; as much again may wait, free, in the pool."""
Job = Callable[[], Iterable[Record]]
"""Work for the reducer: computes records from tensors it alone holds."""


class Reducer:
    """One daemon thread running `Job`s in submission order; its results go to `put`.

    `submit` takes no lock the thread holds while it works: a `SimpleQueue` carries
    the jobs, and the byte count is approximate under races (by one job at most).
    """

    def __init__(
        self,
        put: Callable[[Record], bool],
        count_dropped: Callable[[int], None],
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
    ) -> None:
        self._put = put
        self._count_dropped = count_dropped
        self._max_pending_bytes = max_pending_bytes
        self._jobs: queue.SimpleQueue[tuple[Job, int, int] | None] = queue.SimpleQueue()
        self._pending_bytes = 0
        self._submitted = 0
        self._done = 0
        self.skipped_captures = 0  # captures skipped because the copies waiting filled the bound
        self._idle = threading.Condition()
        self._closed = False
        self._failed = False
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.pool = SnapshotPool(max_pending_bytes)

    def snapshot(self, tensor: torch.Tensor) -> torch.Tensor:
        """A private copy of CPU `tensor` for a job; the job hands it back with `release`."""
        return self.pool.copy(tensor)

    def hold(self, tensor: torch.Tensor) -> None:
        """One more holder of a snapshot: it returns to the pool at its last `release`."""
        self.pool.hold(tensor)

    def release(self, *tensors: torch.Tensor | None) -> None:
        """Hand snapshots back to the pool (tensors not from it are ignored)."""
        self.pool.release(*tensors)

    def admit(self, nbytes: int) -> bool:
        """Whether a capture holding `nbytes` of tensors may start beside the work waiting
        now; when not, it is counted in `skipped_captures`, to be skipped whole rather
        than pile up copies or lose some of its records. Always True when nothing
        waits: one capture may pass the bound on its own."""
        pending = self._pending_bytes
        if not self._closed and (not pending or pending + nbytes <= self._max_pending_bytes):
            return True
        self.skipped_captures += 1
        return False

    def count_dropped(self, rows: int) -> None:
        """Count rows a job could not make (a shared tensor changed while it was read)."""
        self._count_dropped(rows)

    def submit(self, job: Job, nbytes: int, rows: int) -> bool:
        """Queue `job` (holding `nbytes` of tensor copies, making `rows` rows); never blocks.

        The bound is kept by `admit`, asked before a capture starts: a capture once
        started is reduced whole (the copies waiting pass the bound by one capture at
        most), since half a capture is worth less than none. Returns False, counting
        `rows` as dropped, only when the reducer is closed.
        """
        if self._closed:
            self._count_dropped(rows)
            return False
        if self._thread is None:
            self._start()
        self._pending_bytes += nbytes
        self._submitted += 1
        self._jobs.put((job, nbytes, rows))
        return True

    def drain(self, timeout: float | None) -> bool:
        """Wait until every job submitted so far has run; True if that happened in time."""
        target = self._submitted
        with self._idle:
            return self._idle.wait_for(lambda: self._done >= target, timeout)

    def close(self, timeout: float | None) -> bool:
        """Run what is queued (waiting at most `timeout` seconds), then stop the thread."""
        drained = self.drain(timeout)
        self._closed = True
        dropped = 0
        while True:  # what did not run in time
            try:
                item = self._jobs.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                dropped += item[2]
                self._finished(item[1])
        self._jobs.put(None)  # stops the thread once the job in hand is done
        if dropped:
            self._count_dropped(dropped)
        return drained

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._main, name="layerwatch-reducer", daemon=True
                )
                self._thread.start()

    def _main(self) -> None:
        while (item := self._jobs.get()) is not None:
            job, nbytes, rows = item
            try:
                for record in job():
                    self._put(record)
            except Exception:
                self._count_dropped(rows)
                if not self._failed:
                    self._failed = True
                    logger.warning("layerwatch: a reduction failed; dropping it", exc_info=True)
            finally:
                self._finished(nbytes)

    def _finished(self, nbytes: int) -> None:
        self._pending_bytes -= nbytes
        with self._idle:
            self._done += 1
            self._idle.notify_all()
