"""layerwatch: activation statistics of PyTorch training, sent to a layerwatch server.

Usage:

```python
import layerwatch

with layerwatch.Run("http://localhost:8000", name="mlp-baseline") as run:
    run.watch(model, optimizer, every=50)
    for x, y in loader:
        loss = loss_fn(model(x), y)
        loss.backward()
        run.log({"loss": loss})
        optimizer.step()  # closes the step
        optimizer.zero_grad()
```

Query what a server stored with `layerwatch.Api("http://localhost:8000")`.

The public API is what `__all__` names, plus `layerwatch.wire` (the HTTP payloads,
which the server shares). The subpackages are internal, laid out along the data
path: `capture` (hooks) -> `reduce` (statistics on the tensor's device) ->
`delivery` (queue, batches, spool, HTTP), with `probe` (the fixed probe batch) and
`query` (the `Api`) beside them.

Importing this package imports neither torch, httpx nor numpy: `Run` and `Watch`
(torch, httpx) and `Api` (httpx, numpy) are imported on first use.
"""

from __future__ import annotations

from importlib import import_module
from importlib import metadata as _metadata
from typing import TYPE_CHECKING

from layerwatch.errors import (
    ConfigError,
    DeliveryError,
    LayerwatchError,
    NotFoundError,
    PayloadTooLargeError,
    RejectedError,
    RetryableError,
    RunClosedError,
    RunNotFoundError,
)
from layerwatch.options import Histograms, Probe

try:
    __version__ = _metadata.version("layerwatch")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

if TYPE_CHECKING:
    from layerwatch.capture.watch import Watch
    from layerwatch.query.api import Api
    from layerwatch.run import Run

__all__ = [
    "Api",
    "ConfigError",
    "DeliveryError",
    "Histograms",
    "LayerwatchError",
    "NotFoundError",
    "PayloadTooLargeError",
    "Probe",
    "RejectedError",
    "RetryableError",
    "Run",
    "RunClosedError",
    "RunNotFoundError",
    "Watch",
    "__version__",
]

_LAZY = {
    "Api": "layerwatch.query.api",
    "Run": "layerwatch.run",
    "Watch": "layerwatch.capture.watch",
}


def __getattr__(name: str) -> object:
    # Heavy dependencies (torch, httpx, numpy) come with first use, not with the package.
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'layerwatch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
