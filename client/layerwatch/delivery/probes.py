"""`ProbeQueue`: the probe payloads a sender holds, bounded in bytes, kept on disk when it can.

Probes go to the server apart from batches (their own endpoint, their own size
class) and after the batches waiting. The training thread submits; the sender
thread persists, sends and settles. With the run's spool on disk, each probe is
written to a `ProbeFiles` file before its first delivery attempt, so a probe the
server has not taken when the process ends (or dies) is not lost: the next
process of the run, or `layerwatch sync`, sends it. Without a disk spool,
probes live in memory only and what is left at the end is dropped and counted.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass
from pathlib import Path

from layerwatch import wire
from layerwatch.delivery.spool.probe_files import ProbeFiles
from layerwatch.logs import logger

__all__ = ["MAX_PROBE_QUEUE_BYTES", "PendingProbe", "ProbeQueue"]


MAX_PROBE_QUEUE_BYTES = 256 * 1024 * 1024


@dataclass(eq=False)
class PendingProbe:
    """A probe payload awaiting delivery."""

    probe: wire.Probe | None  # None for one read back from disk: `body` is all there is
    nbytes: int
    rows: int  # what it counts for: its layers, or 1
    body: bytes | None = None  # the JSON to POST, made once
    path: Path | None = None  # its file, once written

    def json(self) -> bytes:
        if self.body is None:
            assert self.probe is not None
            # Without layers left out, the body is what servers before `skipped` take.
            leave_out = None if self.probe.skipped else {"skipped"}
            self.body = self.probe.model_dump_json(exclude=leave_out).encode()
        return self.body


class ProbeQueue:
    """Probes in submission order: the training thread submits, the spooler persists, the
    sender sends and settles."""

    def __init__(self, max_bytes: int = MAX_PROBE_QUEUE_BYTES) -> None:
        self._max_bytes = max_bytes
        self._items: collections.deque[PendingProbe] = collections.deque()
        self._bytes = 0
        self._lock = threading.Lock()
        self._persisting = threading.Lock()
        self._files: ProbeFiles | None = None
        self.dropped = 0  # rows given up
        self._left_on_disk = 0  # rows whose files stayed when the queue closed

    def __len__(self) -> int:
        return len(self._items)

    @property
    def spooled(self) -> int:
        """Rows of the probes held on disk, which outlive the process."""
        with self._lock:
            return self._left_on_disk + sum(p.rows for p in self._items if p.path is not None)

    def submit(self, probe: wire.Probe, nbytes: int) -> bool:
        """Queue `probe` (about `nbytes` of packed values); False, counted, past the bound."""
        rows = len(probe.layers) or 1
        with self._lock:
            if self._bytes and self._bytes + nbytes > self._max_bytes:
                self.dropped += rows
                return False
            self._items.append(PendingProbe(probe, nbytes, rows))
            self._bytes += nbytes
        return True

    def keep_on_disk(self, run_directory: Path) -> None:
        """Write probes to `run_directory` from now on; queue those a past process left."""
        self._files = ProbeFiles(run_directory)
        left = []
        for path in self._files.pending():
            body = ProbeFiles.load(path)
            if body is None:
                logger.warning("layerwatch: skipping a damaged probe file %s", path)
                self._files.delete(path)
                continue
            left.append(PendingProbe(None, len(body), _rows(body), body, path))
        with self._lock:
            self._items.extendleft(reversed(left))
            self._bytes += sum(p.nbytes for p in left)

    def persist(self) -> None:
        """Write every queued probe that has no file yet (when on disk)."""
        if self._files is None:
            return
        with self._persisting:  # the spooler persists, and the sender after a split
            with self._lock:
                unwritten = [p for p in self._items if p.path is None]
            for pending in unwritten:
                pending.path = self._files.save(pending.json())
                if pending.path is None:  # the disk refused: memory only from here
                    return

    def head(self) -> PendingProbe | None:
        with self._lock:
            return self._items[0] if self._items else None

    def settle(self, pending: PendingProbe) -> None:
        """`pending` was delivered or refused for good: forget it and its file."""
        with self._lock:
            if self._items and self._items[0] is pending:
                self._items.popleft()
                self._bytes -= pending.nbytes
        if pending.path is not None and self._files is not None:
            self._files.delete(pending.path)

    def split(self, pending: PendingProbe) -> bool:
        """Replace `pending` (answered 413) by two halves of its layers; False if it can't."""
        probe = pending.probe
        if probe is None:
            probe = wire.Probe.model_validate_json(pending.json())
        if len(probe.layers) < 2:
            return False
        half = len(probe.layers) // 2
        first = probe.model_copy(update={"layers": probe.layers[:half]})
        second = probe.model_copy(update={"layers": probe.layers[half:]})
        parts = [PendingProbe(first, pending.nbytes - pending.nbytes // 2, half),
                 PendingProbe(second, pending.nbytes // 2, len(probe.layers) - half)]  # fmt: skip
        self.settle(pending)
        with self._lock:
            self._items.extendleft(reversed(parts))
            self._bytes += pending.nbytes
        self.persist()
        return True

    def drop_all(self) -> None:
        """Give up every probe (the run can never be delivered): count them, delete files."""
        while (pending := self.head()) is not None:
            self.dropped += pending.rows
            self.settle(pending)

    def close(self) -> None:
        """At the end: probes with a file stay on disk (`spooled`), the others are dropped."""
        self.persist()
        with self._lock:
            left, self._items = list(self._items), collections.deque()
            self._bytes = 0
        for pending in left:
            if pending.path is not None:
                self._left_on_disk += pending.rows
            else:
                self.dropped += pending.rows


def _rows(body: bytes) -> int:
    try:
        return len(wire.Probe.model_validate_json(body).layers) or 1
    except ValueError:
        return 1
