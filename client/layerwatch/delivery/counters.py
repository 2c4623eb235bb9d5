"""`Counters`: what became of a run's records, and the one summary line a run ends with."""

from __future__ import annotations

import logging
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from layerwatch.logs import logger

if TYPE_CHECKING:
    from layerwatch.delivery.verdict import Verdict

__all__ = ["Counters", "report"]


@dataclass(frozen=True)
class Counters:
    """What became of the records put on the queue so far."""

    sent: int  # records the server acknowledged
    dropped: int  # records given up: full queue, refused or unsendable batches, shutdown
    failed_batches: int  # batches given up
    spooled: int = 0  # records on disk awaiting delivery (by this process or `layerwatch sync`)
    repeated: int = 0  # scalar values not sent: logged again at a step that had a value
    skipped_captures: int = 0  # captures not taken: the reducer was a whole bound behind


def report(
    counts: Counters,
    *,
    run_id: str,
    status: str,
    flushed: bool,
    timeout: float,
    spool_root: Path | None,
    verdict: Verdict | None = None,
) -> None:
    """Log the summary line of a finished run, with the server's `verdict` when it gave
    one: INFO when all went well, else WARNING; printed to stderr when the program
    configured no logging (a script's last line)."""
    clean = flushed and not (counts.dropped or counts.failed_batches or counts.spooled)
    clean = clean and (verdict is None or not (verdict.errors or verdict.warnings))
    replay = ""
    if counts.spooled and spool_root is not None:
        root = shlex.quote(str(spool_root))
        replay = f"; `layerwatch sync --spool-dir {root}` sends the spooled ones"
    summary = (
        f"layerwatch: run {run_id} {status}: {counts.sent} records sent, "
        f"{counts.spooled} spooled, {counts.dropped} dropped "
        f"({counts.failed_batches} batches given up)"
        + (
            f"; {counts.repeated} repeated scalar values not sent (a scalar keeps its first "
            "value per step)"
            if counts.repeated
            else ""
        )
        + (
            f"; {counts.skipped_captures} captures skipped (the reducer fell behind: "
            "capture less often)"
            if counts.skipped_captures
            else ""
        )
        + ("" if flushed else f" (sending timed out after {timeout:g}s)")
        + replay
        + ("" if verdict is None else f"; {verdict}")
    )
    if logger.hasHandlers():
        logger.log(logging.INFO if clean else logging.WARNING, "%s", summary)
    else:
        print(summary, file=sys.stderr)
