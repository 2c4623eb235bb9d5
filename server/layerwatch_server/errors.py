"""Domain errors raised by the store, and the one table mapping them to HTTP.

Store code raises these without knowing about HTTP; ``main.py`` installs one
handler that turns each into its status code and ``{"detail": ...}``.
"""

from __future__ import annotations


class LayerwatchError(Exception):
    """Base of every error the server answers with a 4xx."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(LayerwatchError):
    """A project, run, tensor or series that does not exist."""


class RunNotFound(NotFound):
    pass


class TensorNotFound(NotFound):
    pass


class Conflict(LayerwatchError):
    """A write that would change stored history, or contradict it."""


class InvalidQuery(LayerwatchError):
    """Query parameters that are well-typed but make no sense together."""


class PayloadTooLarge(LayerwatchError):
    pass


class UnsupportedEncoding(LayerwatchError):
    """A request body in a Content-Encoding the server does not read."""


HTTP_STATUS: dict[type[LayerwatchError], int] = {
    NotFound: 404,
    Conflict: 409,
    InvalidQuery: 422,
    PayloadTooLarge: 413,
    UnsupportedEncoding: 415,
}


def status_for(error: LayerwatchError) -> int:
    for cls in type(error).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 400
