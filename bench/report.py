"""What the benchmarks share: the machine they ran on, and Markdown tables of results."""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Callable
from pathlib import Path


def markdown(rows: list[list[str]], right: Callable[[int], bool]) -> str:
    """A Markdown table of `rows` (the first is the header); `right(i)` right-aligns column i."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [
            c.rjust(w) if n and right(i) else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("| " + " | ".join(cells) + " |")
        if n == 0:
            lines.append(
                "|"
                + "|".join(
                    ("-" * (w + 1) + ":") if right(i) else "-" * (w + 2)
                    for i, w in enumerate(widths)
                )
                + "|"
            )
    return "\n".join(lines)


def machine() -> str:
    """Cores, CPU model, load average and Python version, for the report's first lines."""
    model = platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{os.cpu_count()} cores ({model}), load {load}; Python {platform.python_version()}"
