"""`Backoff`: when the sender tries the server again after a failure."""

from __future__ import annotations

import random
import time

__all__ = ["Backoff"]


class Backoff:
    """Exponential delays with "equal jitter" (so many clients do not retry in step),
    from `first` seconds doubling up to `most`; the server's `Retry-After` wins."""

    def __init__(self, first: float, most: float) -> None:
        self._first = first
        self._most = most
        self.failures = 0  # consecutive
        self.next_attempt = 0.0  # time.monotonic() of the next try

    def ready(self, now: float) -> bool:
        return now >= self.next_attempt

    def failed(self, retry_after: float | None) -> float:
        """Count a failure; return the delay before the next try."""
        self.failures += 1
        if retry_after is not None:
            delay = min(retry_after, self._most)
        else:
            delay = min(self._first * 2 ** min(self.failures - 1, 30), self._most)
            delay *= random.uniform(0.5, 1.0)
        self.next_attempt = time.monotonic() + delay
        return delay

    def succeeded(self) -> int:
        """Reset after a success; return the failures that came before it."""
        failures, self.failures, self.next_attempt = self.failures, 0, 0.0
        return failures
