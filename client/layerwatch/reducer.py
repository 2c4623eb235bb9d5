"""`Reducer`: summarise CPU tensors on a background thread, off the training thread.

On an accelerator a reduction is a few asynchronous kernel launches, so hooks run
it inline. On the CPU the same reduction would run on the training thread and add
its whole cost to the step; instead the hook takes a private copy of the tensor (a
memcpy, far cheaper than the reduction) and hands it to this thread, which runs
the reduction in parallel with training (PyTorch releases the GIL inside its
operators). The copies waiting here are bounded in bytes: past the bound, new work
is dropped and its rows counted, so a slow reducer never grows memory or blocks
training.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Iterable

from layerwatch.buffer import Record

__all__ = ["DEFAULT_MAX_PENDING_BYTES", "Job", "Reducer"]

logger = logging.getLogger("layerwatch")

DEFAULT_MAX_PENDING_BYTES = 512 * 1024 * 1024
Job = Callable[[], Iterable[Record]]
"""Work for the reducer: computes records from tensors it alone holds."""


class Reducer:
    """One daemon thread running `Job`s in submission order; its results go to `put`."""

    def __init__(
        self,
        put: Callable[[Record], bool],
        count_dropped: Callable[[int], None],
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
    ) -> None:
        self._put = put
        self._count_dropped = count_dropped
        self._max_pending_bytes = max_pending_bytes
        self._jobs: collections.deque[tuple[Job, int, int]] = collections.deque()
        self._pending_bytes = 0
        self._busy = False
        self._closed = False
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None
        self._failed = False

    def submit(self, job: Job, nbytes: int, rows: int) -> bool:
        """Queue `job` (holding `nbytes` of tensor copies, making `rows` rows); never blocks.

        Returns False, counting `rows` as dropped, when the pending copies would pass
        the bound or the reducer is closed.
        """
        with self._condition:
            if self._closed or (
                self._pending_bytes and self._pending_bytes + nbytes > self._max_pending_bytes
            ):
                refused = True
            else:
                refused = False
                self._jobs.append((job, nbytes, rows))
                self._pending_bytes += nbytes
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._main, name="layerwatch-reducer", daemon=True
                    )
                    self._thread.start()
                self._condition.notify_all()
        if refused:
            self._count_dropped(rows)
        return not refused

    def drain(self, timeout: float | None) -> bool:
        """Wait until every job submitted so far has run; True if that happened in time."""
        with self._condition:
            return self._condition.wait_for(lambda: not self._jobs and not self._busy, timeout)

    def close(self, timeout: float | None) -> bool:
        """Run what is queued (waiting at most `timeout` seconds), then stop the thread."""
        drained = self.drain(timeout)
        with self._condition:
            self._closed = True
            dropped = sum(rows for _, _, rows in self._jobs)
            self._jobs.clear()
            self._pending_bytes = 0
            self._condition.notify_all()
        if dropped:
            self._count_dropped(dropped)
        return drained

    def _main(self) -> None:
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._jobs or self._closed)
                if not self._jobs:
                    return
                job, nbytes, rows = self._jobs.popleft()
                self._busy = True
            try:
                for record in job():
                    self._put(record)
            except Exception:
                self._count_dropped(rows)
                if not self._failed:
                    self._failed = True
                    logger.warning("layerwatch: a reduction failed; dropping it", exc_info=True)
            finally:
                with self._condition:
                    self._busy = False
                    self._pending_bytes -= nbytes
                    self._condition.notify_all()
