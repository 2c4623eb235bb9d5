"""`DiskSpool`: unsent batches in append-only files, so that no crash or outage loses them.

The files are described in `layerwatch.delivery.spool.files`. A batch record's payload is
`order (i64) | records (u32) | body`, the body being the exact JSON bytes the
sender POSTs: a replay is byte-identical, so the server recognizes a batch it
already stored by its id and stores it once. An ack record's payload is the
`order` of a batch the server took or the sender gave up. Order keys grow for
`push` and shrink for `push_front`, and are never reused while a record naming
them is on disk.

Why write through: every batch goes to disk when it is sealed, not only once
delivery fails. The body is serialized for the POST anyway; writing it, its ack
and removing the spent segment took about 0.2 ms for a 1,000-record batch
(110 kB) on a shared two-core machine: less than serializing it (0.4 ms), far
less than the POST, and on the sender thread. In exchange a process killed at
any moment, with the server up or down, leaves every sealed batch behind.
Without fsync the data survives the process, not the machine; after a power
cut the latest records read as a torn tail.

Acks: `pop` writes its ack with the next call, so a pop followed by
`push_front` (a split batch, a resend after a 404) is one write, the new
records before the parent's ack: there is no moment with neither on disk. A
crash before the ack is written means one batch replayed, which the server
answers as a duplicate. Segments are deleted from the oldest on once nothing
in them awaits delivery, and all of them when the spool empties.

Bound: the bodies of unsent batches take at most `max_bytes`; beyond it the
oldest are evicted (the sender counts them as dropped and logs it once).
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from layerwatch import wire
from layerwatch.delivery.spool.base import Outgoing
from layerwatch.delivery.spool.files import (
    ACK_KIND,
    BATCH_KIND,
    INFO_FILE,
    SEGMENT_SUFFIX,
    SpoolInfo,
    frame,
    lock_directory,
    read_record,
    read_segment,
    read_spool_info,
    write_spool_info,
)
from layerwatch.delivery.spool.probe_files import PROBE_DIR, has_probe_files
from layerwatch.errors import SpoolLockedError
from layerwatch.logs import OnceLog, logger

__all__ = ["DEFAULT_MAX_BYTES", "DiskSpool", "open_run_spool"]


DEFAULT_MAX_BYTES = 1 << 30
DEFAULT_SEGMENT_BYTES = 16 << 20
_BATCH = struct.Struct("<qI")  # order, records; the body follows
_ACK = struct.Struct("<q")  # order
_MAX_DIRECTORIES = 64  # per run id: `<id>`, `<id>.1`, ...


@dataclass(eq=False)
class _Entry:
    """A batch awaiting delivery: where its record is, and the batch once read back."""

    order: int
    seq: int
    records: int
    length: int  # of the body
    segment: int = 0  # 0: held in memory only, because writing it failed
    offset: int = 0  # of the record's header in the segment
    outgoing: Outgoing | None = None  # kept for the head and for memory-only batches


class DiskSpool:
    """A `Spool` in one directory of append-only segment files; see the module docstring.

    Opening takes the directory's lock (`SpoolLockedError` when another process
    holds it) and reads back every batch not yet acknowledged; those belong to
    a previous process and get `seq` 0. Every method but `__len__`, `spooled`
    and `discarded` does file I/O: call them from the sender thread only.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        create: bool = True,
    ) -> None:
        self.directory = Path(directory)
        self._max_bytes = max_bytes
        self._segment_bytes = segment_bytes
        self._entries: deque[_Entry] = deque()
        self._bytes = 0  # bodies of the entries
        self._spooled = 0  # records of the entries on disk
        self._discarded = 0
        self._segments: dict[int, int] = {}  # number -> entries in it, oldest segment first
        self._acks: list[int] = []  # orders popped whose ack is not written yet
        self._first = self._last = 0  # smallest and largest order key on disk
        self._active: int | None = None
        self._active_fd = -1
        self._active_size = 0
        self._next_segment = 1
        self._log_once = OnceLog()
        self._lock_fd = lock_directory(self.directory, create=create)
        self._closed = False
        try:
            self._load()
        except BaseException:
            os.close(self._lock_fd)
            raise

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def spooled(self) -> int:
        return self._spooled

    @property
    def discarded(self) -> int:
        return self._discarded

    # -- Spool --------------------------------------------------------------------------

    def push(self, outgoing: Outgoing) -> list[Outgoing]:
        self._settle()
        self._last += 1
        entry = self._entry(self._last, outgoing)
        self._append([entry], [outgoing], keep=not self._entries)
        self._entries.append(entry)
        evicted: list[Outgoing] = []
        while self._bytes > self._max_bytes and len(self._entries) > 1:
            oldest = self._entries.popleft()
            batch = self._read(oldest)
            self._release(oldest)
            if batch is None:
                self._discarded += oldest.records
            else:
                evicted.append(batch)
        if self._acks:  # evictions are counted as dropped now: their acks must not wait
            self._append([], [], keep=False)
        return evicted

    def push_front(self, batches: list[Outgoing]) -> None:
        # No _settle() first: the acks of a pop just before are written with these records.
        self._first -= len(batches)
        entries = [self._entry(self._first + i, o) for i, o in enumerate(batches)]
        self._append(entries, batches, keep=True)
        self._entries.extendleft(reversed(entries))

    def peek(self) -> Outgoing | None:
        self._settle()
        return self._head()

    def pop(self) -> Outgoing:
        self._settle()
        outgoing = self._head()
        if outgoing is None:
            raise IndexError("pop from an empty spool")
        self._release(self._entries.popleft())
        return outgoing

    def close(self, status: wire.RunStatus | None = None) -> list[Outgoing]:
        """Release the directory: keep what awaits delivery, remove it when nothing does."""
        if self._closed:
            return []
        self._closed = True
        try:
            self._settle()
            lost = [e.outgoing for e in self._entries if not e.segment and e.outgoing]
            info = read_spool_info(self.directory)
            if status is not None and info is not None:
                write_spool_info(self.directory, info.model_copy(update={"status": status}))
            if self._active_fd >= 0:
                if self._spooled:
                    os.fsync(self._active_fd)
                os.close(self._active_fd)
                self._active_fd = -1
            if (
                not self._spooled
                and not has_probe_files(self.directory)
                and (status is None or info is None)
            ):
                self._remove_directory()
            return lost
        finally:
            os.close(self._lock_fd)

    # -- internals ----------------------------------------------------------------------

    def _entry(self, order: int, outgoing: Outgoing) -> _Entry:
        if outgoing.body is None:
            outgoing.body = outgoing.batch.body()
        return _Entry(order, outgoing.seq, outgoing.records, len(outgoing.body))

    def _append(self, entries: list[_Entry], batches: list[Outgoing], *, keep: bool) -> None:
        """Write `entries`, then the pending acks, in one write; on failure keep them in memory."""
        frames: list[bytes] = []
        offsets: list[int] = []
        size = 0
        for entry, outgoing in zip(entries, batches, strict=True):
            assert outgoing.body is not None
            offsets.append(size)
            payload = _BATCH.pack(entry.order, entry.records) + outgoing.body
            frames.append(frame(BATCH_KIND, payload))
            size += len(frames[-1])
        frames.extend(frame(ACK_KIND, _ACK.pack(order)) for order in self._acks)
        start = self._write(b"".join(frames))
        for entry, outgoing, offset in zip(entries, batches, offsets, strict=True):
            self._bytes += entry.length
            if start is None:
                entry.outgoing = outgoing
                continue
            assert self._active is not None
            entry.segment, entry.offset = self._active, start + offset
            entry.outgoing = outgoing if keep else None
            self._segments[entry.segment] += 1
            self._spooled += entry.records
        if start is not None:
            self._acks.clear()

    def _write(self, data: bytes) -> int | None:
        """Append `data` to the active segment; its offset there, or None when that failed."""
        if not data:
            return self._active_size
        start = 0
        try:
            if self._active is None or (
                self._active_size and self._active_size + len(data) > self._segment_bytes
            ):
                self._rotate()
            start = self._active_size
            view = memoryview(data)
            while view:
                view = view[os.write(self._active_fd, view) :]
        except OSError as exc:
            self._log_once("write", logging.ERROR,
                           f"cannot write the spool in {self.directory} ({exc}); "
                           "keeping unsent batches in memory")  # fmt: skip
            if self._active_fd >= 0:
                with contextlib.suppress(OSError):  # a partial record would end the segment
                    os.ftruncate(self._active_fd, start)
                os.close(self._active_fd)
            self._active, self._active_fd = None, -1
            return None
        self._active_size += len(data)
        return start

    def _rotate(self) -> None:
        if self._active_fd >= 0:
            os.close(self._active_fd)
            self._active, self._active_fd = None, -1
        number = self._next_segment
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND
        self._active_fd = os.open(self._segment_path(number), flags, 0o644)
        self._next_segment += 1
        self._active, self._active_size = number, 0
        self._segments[number] = 0

    def _release(self, entry: _Entry) -> None:
        """Forget `entry` (sent, given up or evicted); its ack goes with the next write."""
        self._bytes -= entry.length
        if entry.segment:
            self._spooled -= entry.records
            self._segments[entry.segment] -= 1
            self._acks.append(entry.order)

    def _settle(self) -> None:
        """Write pending acks and delete the segments nothing awaits any more."""
        if not self._entries:
            self._acks.clear()  # the records they name are deleted with their segments
            self._delete_segments(list(self._segments))
            return
        if self._acks:
            self._append([], [], keep=False)
        done = []
        for number, pending in self._segments.items():  # oldest first
            if pending or number == self._active:
                break
            done.append(number)
        self._delete_segments(done)

    def _delete_segments(self, numbers: list[int]) -> None:
        for number in numbers:
            if number == self._active:
                os.close(self._active_fd)
                self._active, self._active_fd = None, -1
            try:
                self._segment_path(number).unlink(missing_ok=True)
            except OSError as exc:
                self._log_once("unlink", logging.WARNING, f"cannot delete a spool segment: {exc}")
            del self._segments[number]

    def _head(self) -> Outgoing | None:
        """The oldest batch, read back when needed; unreadable ones are skipped."""
        while self._entries:
            entry = self._entries[0]
            if entry.outgoing is None:
                entry.outgoing = self._read(entry)
            if entry.outgoing is not None:
                return entry.outgoing
            self._release(self._entries.popleft())
            self._discarded += entry.records
        return None

    def _read(self, entry: _Entry) -> Outgoing | None:
        if entry.outgoing is not None:
            return entry.outgoing
        try:
            with self._segment_path(entry.segment).open("rb") as file:
                file.seek(entry.offset)
                record = read_record(file, _BATCH.size + entry.length)
            if record is None or record[0] != BATCH_KIND:
                raise ValueError("the record does not match its checksum")
            body = record[1][_BATCH.size :]
            batch = wire.Batch.model_validate_json(body)
        except (OSError, ValueError) as exc:  # pydantic.ValidationError is a ValueError
            self._log_once("read", logging.ERROR,
                           f"skipping unreadable batches in {self.directory}: {exc}")  # fmt: skip
            return None
        return Outgoing(seq=entry.seq, batch=batch, records=entry.records, body=body)

    def _load(self) -> None:
        """Read back what earlier processes left: the batches without an ack, in order."""
        pending: dict[int, _Entry] = {}
        numbers = sorted(
            int(path.stem) for path in self.directory.glob(f"*{SEGMENT_SUFFIX}")
            if path.stem.isdigit()
        )  # fmt: skip
        damaged: list[str] = []
        for number in numbers:
            self._segments[number] = 0
            for kind, offset, payload in read_segment(self._segment_path(number), damaged):
                if kind == BATCH_KIND:
                    order, records = _BATCH.unpack_from(payload)
                    length = len(payload) - _BATCH.size
                    pending[order] = _Entry(order, 0, records, length, number, offset)
                else:
                    (order,) = _ACK.unpack(payload)
                    pending.pop(order, None)
                self._first, self._last = min(self._first, order), max(self._last, order)
        if damaged:
            logger.warning(
                "layerwatch: spool %s: damaged or torn records at %s; kept everything before",
                self.directory, ", ".join(damaged),
            )  # fmt: skip
        self._next_segment = numbers[-1] + 1 if numbers else 1
        for entry in sorted(pending.values(), key=lambda e: e.order):
            self._entries.append(entry)
            self._bytes += entry.length
            self._spooled += entry.records
            self._segments[entry.segment] += 1
        self._settle()

    def _remove_directory(self) -> None:
        self._delete_segments(list(self._segments))
        try:
            for path in self.directory.iterdir():
                if path.name in (INFO_FILE, f".{INFO_FILE}.tmp") or path.suffix == SEGMENT_SUFFIX:
                    path.unlink()
                elif path.name == PROBE_DIR:  # emptied: its probes were delivered
                    path.rmdir()
            self.directory.rmdir()
        except OSError as exc:  # e.g. someone left a file of their own there
            logger.debug("layerwatch: cannot remove %s: %s", self.directory, exc)

    def _segment_path(self, number: int) -> Path:
        return self.directory / f"{number:010d}{SEGMENT_SUFFIX}"


def open_run_spool(
    root: str | os.PathLike[str], *, server: str, run: wire.RunCreate, max_bytes: int
) -> DiskSpool:
    """The spool of `run` under `root`, with its `run.json` written.

    Takes `<root>/<run id>`, or `<run id>.<n>` when other processes hold that;
    batches a crashed process left there are sent first.
    """
    assert run.id is not None
    for n in range(_MAX_DIRECTORIES):
        directory = Path(root) / (run.id if n == 0 else f"{run.id}.{n}")
        try:
            spool = DiskSpool(directory, max_bytes=max_bytes)
        except SpoolLockedError:
            continue
        write_spool_info(directory, SpoolInfo(server=server, run=run))
        return spool
    raise SpoolLockedError(f"{_MAX_DIRECTORIES} spool directories of run {run.id} are in use")
