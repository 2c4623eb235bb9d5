"""The spool's files: one directory per run, its `run.json`, framed records, the lock.

Under the spool root (`$LAYERWATCH_SPOOL_DIR`, else `~/.cache/layerwatch/spool`)
each run has a directory named after its id (`<id>.1`, `<id>.2`, ... when
another process holds that one, e.g. a second rank of the same run):

    run.json        `SpoolInfo`: the server, the run's `RunCreate`, and its final
                    status when the server has not taken it; what `layerwatch sync` needs
    0000000001.seg  segments of records, appended to and never rewritten
    probes/         probe payloads not yet delivered, one file each (`probefiles`)

A record is `magic "LWS1" | kind (u8) | length (u32) | crc32 (u32) | payload`,
little-endian, the CRC covering kind, length and payload. A crash (or a power
cut: writes are not fsynced) can leave the last record short, a bad disk a
flipped byte; the reader stops at the first record that is short or fails its
checksum and keeps everything before it, since framing after a damaged length
cannot be trusted. While a process owns a run directory it holds an exclusive
`flock` on it.
"""

from __future__ import annotations

import errno
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pydantic

from layerwatch import wire
from layerwatch.errors import ConfigError, SpoolLockedError

__all__ = [
    "ACK_KIND",
    "BATCH_KIND",
    "HEADER",
    "INFO_FILE",
    "PROBE_KIND",
    "SEGMENT_SUFFIX",
    "SPOOL_DIR_ENV",
    "SpoolInfo",
    "default_spool_root",
    "frame",
    "lock_directory",
    "read_record",
    "read_segment",
    "read_spool_info",
    "resolve_spool_root",
    "write_spool_info",
]

SPOOL_DIR_ENV = "LAYERWATCH_SPOOL_DIR"
INFO_FILE = "run.json"
SEGMENT_SUFFIX = ".seg"
MAGIC = b"LWS1"
HEADER = struct.Struct("<4sBII")  # magic, kind, payload length, crc32
BATCH_KIND, ACK_KIND, PROBE_KIND = 1, 2, 3


def default_spool_root() -> Path:
    """`$LAYERWATCH_SPOOL_DIR`, else `~/.cache/layerwatch/spool`."""
    configured = os.environ.get(SPOOL_DIR_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "layerwatch" / "spool"


def resolve_spool_root(spool_dir: object) -> Path | None:
    """The root a `Run(spool_dir=...)` means: True is the default, None or False none."""
    if spool_dir is None or spool_dir is False:
        return None
    if spool_dir is True:
        return default_spool_root()
    if isinstance(spool_dir, (str, os.PathLike)) and str(spool_dir):
        return Path(spool_dir).expanduser()
    raise ConfigError(f"`spool_dir` must be a folder, None or False, not {spool_dir!r}")


class SpoolInfo(pydantic.BaseModel):
    """Contents of `run.json`: where the batches go and how to create their run there."""

    server: str
    run: wire.RunCreate
    status: wire.RunStatus | None = None  # final status the server has not taken yet


def read_spool_info(directory: Path) -> SpoolInfo | None:
    """The `run.json` in `directory`; None when missing or unreadable."""
    try:
        return SpoolInfo.model_validate_json((directory / INFO_FILE).read_bytes())
    except (OSError, ValueError):
        return None


def write_spool_info(directory: Path, info: SpoolInfo) -> None:
    """Replace `run.json` in `directory` atomically (write, then rename)."""
    temporary = directory / f".{INFO_FILE}.tmp"
    temporary.write_text(info.model_dump_json(), encoding="utf-8")
    os.replace(temporary, directory / INFO_FILE)


def frame(kind: int, payload: bytes) -> bytes:
    header = HEADER.pack(MAGIC, kind, len(payload), _crc(kind, payload))
    return header + payload


def _crc(kind: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(struct.pack("<BI", kind, len(payload))))


def read_record(file: BinaryIO, limit: int) -> tuple[int, bytes] | None:
    """(kind, payload) of the record at the file's position; None when short or damaged."""
    header = file.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    magic, kind, length, crc = HEADER.unpack(header)
    if magic != MAGIC or kind not in (BATCH_KIND, ACK_KIND, PROBE_KIND) or length > limit:
        return None
    payload = file.read(length)
    if len(payload) < length or _crc(kind, payload) != crc:
        return None
    return kind, payload


def read_segment(path: Path, damaged: list[str]) -> Iterator[tuple[int, int, bytes]]:
    """(kind, offset, payload) of each record in `path`, up to the first damaged one."""
    with path.open("rb") as file:
        size = os.fstat(file.fileno()).st_size
        offset = 0
        while offset < size:
            record = read_record(file, size - offset)
            if record is None:
                damaged.append(f"{path.name}:{offset}")
                return
            yield record[0], offset, record[1]
            offset += HEADER.size + len(record[1])


def lock_directory(directory: Path, *, create: bool) -> int:
    """A descriptor of `directory` holding its exclusive lock."""
    import fcntl  # POSIX only: elsewhere opening a spool fails and runs keep batches in memory

    for _ in range(3):
        if create:
            directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolLockedError(f"{directory} is in use by another process") from None
        try:
            current: os.stat_result | None = os.stat(directory)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(os.fstat(fd), current):
            return fd
        os.close(fd)  # its owner emptied and removed it while we were opening it
        if not create:
            raise FileNotFoundError(errno.ENOENT, "spool directory was removed", str(directory))
    raise SpoolLockedError(f"{directory} keeps being removed by another process")
