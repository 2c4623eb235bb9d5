"""`ProbeFiles`: probe payloads awaiting the server, one file each in the run's spool.

Probes are big (megabytes) and rare (an epoch's end), so they do not share the
batch segments: the sender writes each probe it holds to
`<run spool directory>/probes/<number>.probe`, one framed record (checksummed,
see `layerwatch.delivery.spool.files`) holding the exact JSON it POSTs, written under a
temporary name and renamed into place, so a file is whole or absent. A file is
deleted once the server has taken its probe or refused it for good. Files left
by a process that was killed, or that finished while the server was away, are
sent by the next process of the same run or by `layerwatch sync`, oldest first;
the server stores a probe sent twice once.
"""

from __future__ import annotations

import os
from pathlib import Path

from layerwatch.delivery.spool.files import PROBE_KIND, frame, read_record
from layerwatch.logs import logger

__all__ = ["PROBE_DIR", "ProbeFiles", "has_probe_files"]


PROBE_DIR = "probes"
_SUFFIX = ".probe"


def has_probe_files(run_directory: Path) -> bool:
    """Whether `run_directory` holds probes awaiting delivery."""
    folder = run_directory / PROBE_DIR
    return folder.is_dir() and any(folder.glob(f"*{_SUFFIX}"))


class ProbeFiles:
    """The probe files of one run directory; used by its sender thread only."""

    def __init__(self, run_directory: Path) -> None:
        self.directory = run_directory / PROBE_DIR
        self._next = 1 + max((_number(p) for p in self.pending()), default=0)
        self._failed = False

    def pending(self) -> list[Path]:
        """The files awaiting delivery, oldest first."""
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob(f"*{_SUFFIX}"), key=_number)

    def save(self, body: bytes) -> Path | None:
        """Write `body` to a new file; None (logged once) when the disk refuses."""
        path = self.directory / f"{self._next:010d}{_SUFFIX}"
        temporary = path.with_suffix(".tmp")
        try:
            self.directory.mkdir(exist_ok=True)
            temporary.write_bytes(frame(PROBE_KIND, body))
            os.replace(temporary, path)
        except OSError as exc:
            if not self._failed:
                logger.warning("layerwatch: cannot keep a probe on disk (%s); it stays in "
                               "memory only", exc)  # fmt: skip
            self._failed = True
            return None
        self._next += 1
        return path

    def delete(self, path: Path) -> None:
        """Remove a delivered probe's file, and the folder once it is empty."""
        try:
            path.unlink(missing_ok=True)
            if not any(self.directory.iterdir()):
                self.directory.rmdir()
        except OSError as exc:
            logger.debug("layerwatch: cannot remove %s: %s", path, exc)

    @staticmethod
    def load(path: Path) -> bytes | None:
        """The JSON body a file holds; None when it is unreadable or damaged."""
        try:
            with path.open("rb") as file:
                record = read_record(file, os.fstat(file.fileno()).st_size)
        except OSError:
            return None
        if record is None or record[0] != PROBE_KIND:
            return None
        return record[1]


def _number(path: Path) -> int:
    try:
        return int(path.stem)
    except ValueError:
        return 0
