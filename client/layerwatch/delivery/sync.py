"""`layerwatch sync`: send the batches (and probes) that runs left in their on-disk spool.

A run leaves batches behind when its process is killed, or when `finish()`
could not deliver everything in time. Each run directory is replayed by a
`Delivery` over its `DiskSpool`: the code that sends during training, with its
retries, 413 splits and 404 handling. Batches keep their ids and bytes, so one
the server already stored is answered as a duplicate and stored once, and
running sync twice is harmless. Directories locked by a live process are
skipped: that process is still sending them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx

from layerwatch.delivery.pipeline import Delivery
from layerwatch.delivery.queue import Buffer
from layerwatch.delivery.spool.disk import DiskSpool
from layerwatch.delivery.spool.files import default_spool_root, read_spool_info
from layerwatch.delivery.spool.probe_files import has_probe_files
from layerwatch.delivery.transport import make_client
from layerwatch.errors import SpoolLockedError

__all__ = ["sync_spools"]

_STOP_GRACE = 5.0  # seconds for the final status update and closing the spool
_REQUEST_TIMEOUT = 30.0  # seconds per request: a large batch on a busy server takes a while


def sync_spools(
    spool_dir: str | Path | None = None,
    *,
    server: str | None = None,
    run_id: str | None = None,
    timeout: float = 30.0,
    http: httpx.Client | None = None,
    echo: Callable[[str], None] = print,
) -> int:
    """Replay every run directory under `spool_dir`; 0 when nothing is left undelivered.

    `server` overrides the one each run was sending to; `run_id` picks one run;
    a run is given up after `timeout` seconds without progress. Prints a line
    per run through `echo`.
    """
    root = Path(spool_dir).expanduser() if spool_dir is not None else default_spool_root()
    directories = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    client = make_client(timeout=_REQUEST_TIMEOUT) if http is None else http
    failed = matched = 0
    try:
        for directory in directories:
            info = read_spool_info(directory)
            if run_id is not None and (info is None or info.run.id != run_id):
                continue
            matched += 1
            ok, line = _sync_directory(directory, client, server=server, timeout=timeout)
            failed += not ok
            echo(line)
    finally:
        if http is None:
            client.close()
    if not matched:
        echo(f"nothing to sync in {root}" + (f" for run {run_id}" if run_id else ""))
    return 1 if failed else 0


def _sync_directory(
    directory: Path, http: httpx.Client, *, server: str | None, timeout: float
) -> tuple[bool, str]:
    """(everything delivered, the line to print) for one run directory."""
    info = read_spool_info(directory)
    if info is not None and info.run.id is None:  # not written by a Run: no run to send to
        info = None
    name = f"run {info.run.id}" if info is not None else str(directory)
    try:
        spool = DiskSpool(directory, create=False)
    except SpoolLockedError:
        return True, f"{name}: skipped, its process is still running ({directory})"
    except FileNotFoundError:
        return True, f"{name}: nothing to send (its process just finished)"
    probes = has_probe_files(directory)
    if info is None:  # killed before writing run.json: fine if it wrote nothing else either
        empty = not len(spool) and not probes
        spool.close()
        if empty:
            return True, f"{name}: nothing to send"
        return False, f"{name}: no readable run.json; cannot tell which run it belongs to"
    if not len(spool) and not probes and info.status is None:
        spool.close()
        return True, f"{name}: nothing to send"
    sender = Delivery(
        http=http, server=(server or info.server).rstrip("/"), run=info.run, buffer=Buffer(1),
        tensors={}, flush_secs=1.0, batch_size=1, backoff=0.5, spool=spool,
        run_exists=len(spool) > 0,  # a status alone needs the run, which may never have been made
    )  # fmt: skip
    sender.start()
    progress, deadline = -1, 0.0
    while sender.alive and not sender.flush(min(timeout, 1.0)):
        counts = sender.counters
        now = time.monotonic()
        if counts.sent + counts.dropped != progress:
            progress, deadline = counts.sent + counts.dropped, now + timeout
        elif now >= deadline:
            break
    sender.stop(info.status, _STOP_GRACE)
    counts = sender.counters
    ok = not (counts.spooled or counts.dropped) and not directory.exists()
    line = f"{name}: {counts.sent} records sent"
    if counts.spooled:
        line += f", {counts.spooled} still spooled in {directory}"
    if counts.dropped:
        line += f", {counts.dropped} refused by the server"
    if not ok and not counts.spooled and directory.exists():
        line += f", status `{info.status}` not set (kept in {directory})"
    return ok, line
