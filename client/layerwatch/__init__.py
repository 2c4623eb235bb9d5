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

Importing this package imports neither torch nor httpx; they are imported when a
`Run` is made or a model watched.
"""

from __future__ import annotations

from importlib import metadata as _metadata

from layerwatch.errors import (
    ConfigError,
    DeliveryError,
    LayerwatchError,
    PayloadTooLargeError,
    RejectedError,
    RetryableError,
    RunClosedError,
    RunNotFoundError,
)
from layerwatch.hooks import Watch
from layerwatch.run import Run

try:
    __version__ = _metadata.version("layerwatch")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = [
    "ConfigError",
    "DeliveryError",
    "LayerwatchError",
    "PayloadTooLargeError",
    "RejectedError",
    "RetryableError",
    "Run",
    "RunClosedError",
    "RunNotFoundError",
    "Watch",
    "__version__",
]
