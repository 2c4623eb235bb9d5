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

Query what a server stored with `layerwatch.Api("http://localhost:8000")` (see
`layerwatch.api`).

Importing this package imports neither torch, httpx nor numpy; they are imported
when a `Run` is made, a model watched, or `layerwatch.Api` first used.
"""

from __future__ import annotations

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
from layerwatch.hooks import Watch
from layerwatch.run import Run

if TYPE_CHECKING:
    from layerwatch.api import Api

try:
    __version__ = _metadata.version("layerwatch")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = [
    "Api",
    "ConfigError",
    "DeliveryError",
    "LayerwatchError",
    "NotFoundError",
    "PayloadTooLargeError",
    "RejectedError",
    "RetryableError",
    "Run",
    "RunClosedError",
    "RunNotFoundError",
    "Watch",
    "__version__",
]


def __getattr__(name: str) -> object:
    # `Api` needs httpx and numpy: imported on first use, not with the package.
    if name == "Api":
        from layerwatch.api import Api

        return Api
    raise AttributeError(f"module 'layerwatch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"Api"})
