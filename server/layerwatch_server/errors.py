"""Domain errors raised by the store and the views, each with its HTTP status and stable code.

Every error the server answers has the body ``{"detail": ..., "code": ...}``:
``detail`` is prose (or, for a refused request or payload, the list of
validation errors) for people; ``code`` is for programs, and stays the same
across releases. Clients branch on ``code``, never on ``detail``.

======  ========================  ==================================================
status  code                      when
======  ========================  ==================================================
400     ``invalid_host``          a Host header outside the server's allowlist
401     ``unauthorized``          no token, or one that is malformed, unknown, expired
                                  or revoked (`Unauthorized`; always the same answer,
                                  with ``WWW-Authenticate: Bearer``)
403     ``forbidden``             the token's scope does not allow the request, or it
                                  does not cover the project a run is created in
                                  (`Forbidden`)
404     ``run_not_found``         no run with this id (`RunNotFound`)
404     ``tensor_not_found``      the run has no such tensor (`TensorNotFound`)
404     ``scalar_not_found``      the run has no such scalar (`ScalarNotFound`)
404     ``project_not_found``     no project of this name (`ProjectNotFound`)
404     ``probe_not_found``       no probe at that step, or no such layer in it
                                  (`ProbeNotFound`)
404     ``token_not_found``       no API token of this name (`TokenNotFound`)
404     ``not_found``             anything else that does not exist (`NotFound`),
                                  and unknown URLs
405     ``method_not_allowed``    the URL exists, the method does not
409     ``conflict``              a write that contradicts stored history (`Conflict`)
413     ``payload_too_large``     a body over the size cap, before or after gzip
                                  (`PayloadTooLarge`)
415     ``unsupported_encoding``  a Content-Encoding other than gzip
                                  (`UnsupportedEncoding`)
422     ``invalid``               request or payload validation, well-typed but
                                  senseless parameters (`InvalidQuery`), a value out
                                  of the database's range
429     ``rate_limited``          the token sent more writes than its rate allows;
                                  retry after ``Retry-After`` seconds (`RateLimited`)
503     ``unavailable``           the database is busy or unavailable; retry after
                                  ``Retry-After`` seconds
any     ``http_<status>``         any other HTTP error of the framework
======  ========================  ==================================================

Store and view code raises these without knowing about HTTP; ``main.py``
installs the handlers that turn them (and the framework's own errors) into
responses.
"""

from __future__ import annotations

from typing import ClassVar


class LayerwatchError(Exception):
    """Base of every error the server answers with a 4xx; subclasses set status and code.

    Only the subclasses are raised; the base answers like any other HTTP 400.
    """

    status_code: ClassVar[int] = 400
    code: ClassVar[str] = "http_400"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    @property
    def headers(self) -> dict[str, str]:
        """Headers the answer carries besides the body."""
        return {}


class Unauthorized(LayerwatchError):
    """No valid token: missing, malformed, unknown, expired or revoked, never saying which."""

    status_code = 401
    code = "unauthorized"

    def __init__(self) -> None:
        super().__init__("a valid API token is required: send it as `Authorization: Bearer lw_...`")

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="layerwatch"'}


class Forbidden(LayerwatchError):
    """A valid token whose scope or projects do not allow the request."""

    status_code = 403
    code = "forbidden"


class RateLimited(LayerwatchError):
    """The token sent writes faster than its rate limit allows."""

    status_code = 429
    code = "rate_limited"

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many requests for this token; retry after {retry_after} s")
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class NotFound(LayerwatchError):
    """Something asked for does not exist; the subclasses say what."""

    status_code = 404
    code = "not_found"


class RunNotFound(NotFound):
    code = "run_not_found"


class TensorNotFound(NotFound):
    code = "tensor_not_found"


class ScalarNotFound(NotFound):
    code = "scalar_not_found"


class ProjectNotFound(NotFound):
    code = "project_not_found"


class ProbeNotFound(NotFound):
    """No probe at the step asked for, or the probe has no such layer."""

    code = "probe_not_found"


class TokenNotFound(NotFound):
    code = "token_not_found"


class Conflict(LayerwatchError):
    """A write that would change stored history, or contradict it."""

    status_code = 409
    code = "conflict"


class InvalidQuery(LayerwatchError):
    """Parameters or a body that are well-formed but make no sense."""

    status_code = 422
    code = "invalid"


class PayloadTooLarge(LayerwatchError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedEncoding(LayerwatchError):
    """A request body in a Content-Encoding the server does not read."""

    status_code = 415
    code = "unsupported_encoding"


INVALID_HOST = "invalid_host"
"""The code of a 400 for a Host header outside the allowlist."""

UNAVAILABLE = "unavailable"
"""The code of a 503: the database is busy or unavailable."""


def http_error_code(status: int) -> str:
    """The code of an HTTP error the framework raises itself: no route, no such method, ..."""
    if status == NotFound.status_code:
        return NotFound.code
    if status == 405:
        return "method_not_allowed"
    return f"http_{status}"
