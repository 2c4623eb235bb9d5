"""The server's diagnosis of a finished run, for its summary line: asked once, briefly.

`finish()` asks only when everything was delivered (the server answered moments
ago), with a short timeout of its own, so a slow diagnosis, an older server
without `/findings` or a refused token costs at most `VERDICT_TIMEOUT` and
leaves the line without a verdict.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from layerwatch.delivery.transport import make_client, send
from layerwatch.errors import DeliveryError

__all__ = ["VERDICT_TIMEOUT", "Verdict", "ask_verdict"]

VERDICT_TIMEOUT = 2.0
"""Seconds to wait for the findings: a run's diagnosis is cached and usually instant."""


@dataclass(frozen=True)
class Verdict:
    """How many findings of each severity the server's diagnosis has for the run."""

    run_id: str
    errors: int
    warnings: int

    def __str__(self) -> str:
        if not self.errors and not self.warnings:
            return "the server's diagnosis found nothing wrong"
        counts = [
            f"{n} {word}{'' if n == 1 else 's'}"
            for n, word in ((self.errors, "error"), (self.warnings, "warning"))
            if n
        ]
        found = " and ".join(counts)
        return f"the server's diagnosis found {found} (`layerwatch check {self.run_id}`)"


def ask_verdict(server: str, run_id: str, *, timeout: float = VERDICT_TIMEOUT) -> Verdict | None:
    """The counts of the run's error and warning findings, or None when they cannot be
    had within `timeout` seconds."""
    try:
        with make_client(timeout=timeout) as http:
            response = send(http, "GET", f"{server}/api/v1/runs/{run_id}/findings")
        severities = [finding["severity"] for finding in response.json()["findings"]]
    except (DeliveryError, httpx.HTTPError, ValueError, KeyError, TypeError):
        return None
    return Verdict(run_id, errors=severities.count("error"), warnings=severities.count("warning"))
