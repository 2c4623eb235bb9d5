"""Where measurements wait between the training thread and the sender.

`Buffer` is the bounded queue the training thread puts records on: a put never
blocks, and a record that finds the queue full is dropped and counted.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field

from layerwatch.records import Record

__all__ = ["Buffer", "FlushRequest", "Item", "Wake"]


@dataclass(eq=False)
class FlushRequest:
    """Put on the queue by `flush()`; done once every record ahead of it is settled."""

    done: threading.Event = field(default_factory=threading.Event)
    upto: int = -1  # set by the sender: sequence number of the last batch sealed before it


class Wake:
    """Put on the queue to wake the sender early (e.g. to stop)."""


Item = Record | FlushRequest | Wake


class Buffer:
    """Bounded queue from the training thread to the sender; `put` never blocks."""

    def __init__(self, maxsize: int) -> None:
        self._queue: queue.Queue[Item] = queue.Queue(maxsize)
        self._dropped = 0
        self._lock = threading.Lock()

    @property
    def maxsize(self) -> int:
        return self._queue.maxsize

    @property
    def dropped(self) -> int:
        """Records dropped because the queue was full."""
        return self._dropped

    def put(self, record: Record) -> bool:
        """Queue `record`, or drop and count its rows when the queue is full."""
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.count_dropped(record.rows)
            return False
        return True

    def count_dropped(self, rows: int) -> None:
        """Count rows lost before reaching the queue (e.g. by a full reducer)."""
        with self._lock:  # hooks may run on several threads (nn.DataParallel)
            self._dropped += rows

    def put_control(self, item: FlushRequest | Wake, timeout: float | None) -> bool:
        """Queue a control item, waiting up to `timeout` seconds for room (never from hooks)."""
        try:
            self._queue.put(item, timeout=timeout if timeout is None else max(timeout, 0.0))
        except queue.Full:
            return False
        return True

    def get(self, timeout: float) -> Item | None:
        """Take the next item, waiting up to `timeout` seconds; None when there is none."""
        try:
            if timeout <= 0:
                return self._queue.get_nowait()
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
