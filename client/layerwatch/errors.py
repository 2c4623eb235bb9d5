"""
Our exception hierarchy:

* LayerwatchError
  + ConfigError (also a ValueError) - a bad argument to `Run(...)` or `Run.watch(...)`.
  + RunClosedError - a method other than `close()`/`finish()` called on a closed `Run`.
  + DeliveryError - the server did not take or answer a request. In a `Run` it is raised
    and handled inside the sender thread, never in training code (visible only in log
    messages); `Api` queries raise it to their caller.
    - RetryableError - connection failure, timeout, 429, 502, 503, 504. Backed off and retried
      by a `Run`; from `Api`, with the httpx error as its `__cause__`.
    - RejectedError - any other failure answer, with the server's `detail`. A `Run` drops the
      batch and counts it.
      + PayloadTooLargeError - 413. The batch is split in two and each half is retried.
      + NotFoundError - 404: no such run, tensor, scalar or probe.
        + RunNotFoundError - 404 with the code `run_not_found`. For a batch, the run is
          created again, then the batch retried.
  + SpoolLockedError - another process holds a run's spool directory. `layerwatch sync`
    skips that directory; a `Run` tries the next name, or keeps its batches in memory.

A `Run` raises only `ConfigError` and `RunClosedError` into user code, and only
from construction, `watch()`, or calls on a closed run: after `Run(...)` returns,
network problems, a full queue or a failing hook are logged and counted instead.
The query client `Api` raises `DeliveryError`s to its caller.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DeliveryError",
    "LayerwatchError",
    "NotFoundError",
    "PayloadTooLargeError",
    "RejectedError",
    "RetryableError",
    "RunClosedError",
    "RunNotFoundError",
    "SpoolLockedError",
]


class LayerwatchError(Exception):
    """Base class for every error layerwatch raises."""


class ConfigError(LayerwatchError, ValueError):
    """A bad argument to `Run(...)` or `Run.watch(...)`, found before training starts."""


class RunClosedError(LayerwatchError):
    """The `Run` was closed; logging, watching or stepping it again is a mistake."""


class DeliveryError(LayerwatchError):
    """The server did not take or answer a request (a `Run`'s sender handles these itself).

    `status_code` is the HTTP status, if an answer came; `detail` the server's `detail`;
    `code` the server's stable error code (`run_not_found`, `conflict`, ...; see the
    README), to branch on rather than the prose of `detail`.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        detail: object = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.detail = detail
        self.code = code


class RetryableError(DeliveryError):
    """A failure worth retrying later: no connection, a timeout, 429, 502, 503 or 504."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        retry_after: float | None = None,
        detail: object = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, detail=detail, code=code)
        self.retry_after = retry_after


class RejectedError(DeliveryError):
    """The server refused the request; sending it again would be refused again."""


class PayloadTooLargeError(RejectedError):
    """413: the batch is too large; smaller batches may pass."""


class NotFoundError(RejectedError):
    """404 to a query: the run, tensor, scalar or probe asked for does not exist."""


class RunNotFoundError(NotFoundError):
    """404 for a run: the server does not know the run (yet, or any more)."""


class SpoolLockedError(LayerwatchError):
    """A spool directory is locked by another process, which is still writing it."""
