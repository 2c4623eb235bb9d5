"""``layerwatch check RUN_ID``: the server's diagnosis of a run as a table, and an exit
status for scripts and CI (1 when a finding reaches ``--fail-on``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from layerwatch.query.results import Finding

LEVELS = {"info": 0, "warning": 1, "error": 2}
EXIT_FOUND = 1
"""A finding reached the ``--fail-on`` level."""
EXIT_UNAVAILABLE = 2
"""No such run, the server refused, or it could not be reached."""


def format_findings(findings: Sequence[Finding]) -> str:
    """The findings as a plain-text table, one line each (the message whole, last);
    "no findings" when there are none."""
    if not findings:
        return "no findings"
    rows = [("SEVERITY", "KIND", "WHERE", "STEP", "SURE", "MESSAGE")]
    for f in findings:
        where = f.scalar if f.scalar is not None else f"{f.tensor} ({f.tensor_kind})"
        rows.append((f.severity, f.kind, str(where), str(f.step), f"{f.confidence:.0%}", f.message))
    sizes = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = []
    for row in rows:
        head = "  ".join(cell.ljust(size) for cell, size in zip(row, sizes, strict=False))
        lines.append(f"{head}  {row[5]}")
    return "\n".join(lines)


def run_check(
    run_id: str, *, server: str | None, fail_on: str = "error", out: TextIO | None = None
) -> int:
    """Print the run's findings; 0, `EXIT_FOUND` or `EXIT_UNAVAILABLE`."""
    import layerwatch
    from layerwatch.errors import DeliveryError, LayerwatchError

    out = out or sys.stdout
    try:
        with layerwatch.Api(server, timeout=60.0) as api:
            where = api.server
            findings = api.run(run_id).findings()
    except layerwatch.RunNotFoundError:
        print(f"layerwatch check: no run `{run_id}` on {where}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except DeliveryError as error:  # unreachable, or refused (a token missing or wrong)
        print(f"layerwatch check: {error}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except LayerwatchError as error:  # a server URL that is not one
        print(f"layerwatch check: {error}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    print(format_findings(findings), file=out)
    worst = max((LEVELS[f.severity] for f in findings), default=-1)
    return EXIT_FOUND if worst >= LEVELS[fail_on] else 0
