"""Every option of `Run` and `Run.watch()`: its default and its check.

A mistake raises `ConfigError` here, before training starts. This module is a leaf:
it imports neither torch nor httpx, so `layerwatch.Probe(...)` and
`layerwatch.Histograms(...)` are cheap to build and the checks run anywhere.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from layerwatch import wire
from layerwatch.errors import ConfigError

if TYPE_CHECKING:
    import httpx
    import torch

__all__ = [
    "DEFAULT_ATTRIBUTION_STEPS",
    "DEFAULT_PROBE_FEATURES",
    "DEFAULT_SERVER",
    "SERVER_ENV",
    "TOKEN_ENV",
    "CaptureOptions",
    "Histograms",
    "Probe",
    "capture_options",
    "check_count",
    "check_seconds",
    "resolve_probe",
    "resolve_server",
]

DEFAULT_SERVER = "http://127.0.0.1:8000"
SERVER_ENV = "LAYERWATCH_SERVER"
TOKEN_ENV = "LAYERWATCH_TOKEN"

DEFAULT_ATTRIBUTION_STEPS = 32
"""Points on each integrated-gradient path (`Probe(attribution_steps=...)`)."""

DEFAULT_PROBE_FEATURES = 1024
"""Most values kept per probe sample and layer (`Probe(features=...)`)."""

_MAX_PROBE_FEATURES = wire.MAX_PROBE_VALUES // wire.MAX_PROBE_SAMPLES


@dataclass(frozen=True)
class Histograms:
    """How `Run.watch()` histograms each captured tensor.

    Usage:

    ```python
    run.watch(model, histograms=layerwatch.Histograms(bins=128, sample_size=0))
    run.watch(model, histograms=128)   # 128 bins, the default sample size
    run.watch(model, histograms=None)  # no histograms
    ```

    * **bins** - bins (1-512) over each tensor's finite range.
    * **sample_size** - histograms of larger tensors are estimated from a uniform
      sample of this many elements (the same positions at every capture); 0 for
      exact histograms. Statistics are always exact.
    """

    bins: int = wire.DEFAULT_BINS
    sample_size: int = wire.DEFAULT_SAMPLE_SIZE

    def __post_init__(self) -> None:
        bins, size = self.bins, self.sample_size
        if isinstance(bins, bool) or not isinstance(bins, int) or not 1 <= bins <= wire.MAX_BINS:
            raise ConfigError(f"`bins` must be an integer from 1 to {wire.MAX_BINS}, not {bins!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ConfigError(
                f"`sample_size` must be 0 (exact) or a positive integer, not {size!r}"
            )


@dataclass(frozen=True)
class CaptureOptions:
    """What a `Watch` captures at each captured step; see `Run.watch()`."""

    activations: bool = True
    weights: bool = True
    gradients: bool = True
    histograms: Histograms | None = Histograms()
    unit_means: bool = True
    weight_change: bool = True
    sentinel: bool = True  # check every step for NaN and inf (capture.sentinel)

    @property
    def bins(self) -> int | None:
        return None if self.histograms is None else self.histograms.bins

    @property
    def sample_size(self) -> int:
        return wire.DEFAULT_SAMPLE_SIZE if self.histograms is None else self.histograms.sample_size


def capture_options(
    *,
    activations: object,
    weights: object,
    gradients: object,
    histograms: object,
    unit_means: object,
    weight_change: object,
    sentinel: object = True,
) -> CaptureOptions:
    """The capture switches of `Run.watch()`, checked."""
    switches = {"activations": activations, "weights": weights, "gradients": gradients,
                "unit_means": unit_means, "weight_change": weight_change,
                "sentinel": sentinel}  # fmt: skip
    for flag, value in switches.items():
        if not isinstance(value, bool):
            raise ConfigError(f"`{flag}` must be True or False, not {value!r}")
    if isinstance(histograms, int) and not isinstance(histograms, bool):
        histograms = Histograms(bins=histograms)
    elif histograms is not None and not isinstance(histograms, Histograms):
        raise ConfigError(
            f"`histograms` must be a number of bins, a layerwatch.Histograms or None, "
            f"not {histograms!r}"
        )
    return CaptureOptions(histograms=histograms, **switches)  # type: ignore[arg-type]


@dataclass(frozen=True, eq=False)  # it holds tensors: compared by identity
class Probe:
    """A fixed held-out batch that `Run.watch()` runs through the model to record what
    every layer makes of each sample.

    Usage:

    ```python
    run.watch(model, optimizer, probe=(x_val[:512], y_val[:512]))  # at run.probe()
    run.watch(model, optimizer, probe=layerwatch.Probe(x_val, y_val, every=500, attributions=8))
    ```

    At each probe the model runs on `inputs` in eval mode without gradients, and
    every chosen leaf module's output for every sample is sent (float16, pooled or
    truncated to `features` values per sample; see `layerwatch.probe.capture`), with
    the labels and the predictions. The model's modes, gradients, RNG state and
    BatchNorm statistics are left as they were.

    * **inputs** - a tensor (`model(x)`), a tuple or list (`model(*x)`) or a dict
      (`model(**x)`) of tensors sharing their first dimension; at most 1024 samples.
    * **labels** - integer class labels of the samples, or None.
    * **every** - probe when the step reaches a multiple of this; None (default)
      probes only when `run.probe()` is called, e.g. after each epoch.
    * **features** - most values kept per sample and layer (1-16384).
    * **attributions** - also explain the first this many samples (0-64) with
      integrated gradients toward their label (or the predicted class) from an
      all-zero baseline; needs Captum (extra `attribution`) and inputs of one
      float tensor.
    * **attribution_steps** - steps of the integrated-gradient path; each probe then
      costs about `attributions * attribution_steps` extra forward and backward
      passes, run 256 at a time.
    """

    inputs: object
    labels: torch.Tensor | None = None
    every: int | None = None
    features: int = DEFAULT_PROBE_FEATURES
    attributions: int = 0
    attribution_steps: int = DEFAULT_ATTRIBUTION_STEPS

    def __post_init__(self) -> None:
        if self.every is not None:
            check_count("every", self.every)
        features = check_count("features", self.features)
        if features > _MAX_PROBE_FEATURES:
            raise ConfigError(f"`features` must be at most {_MAX_PROBE_FEATURES}, not {features}")
        check_count("attribution_steps", self.attribution_steps)
        count = self.attributions
        if (
            isinstance(count, bool)
            or not isinstance(count, int)
            or not 0 <= count <= wire.MAX_ATTRIBUTION_SAMPLES
        ):
            raise ConfigError(
                f"`attributions` must be 0-{wire.MAX_ATTRIBUTION_SAMPLES}, not {count!r}"
            )


def resolve_probe(probe: object) -> Probe | None:
    """`Run.watch(probe=...)`: a `Probe`, `(inputs, labels)`, bare inputs, or None."""
    if probe is None or isinstance(probe, Probe):
        return probe
    if isinstance(probe, tuple) and len(probe) == 2:
        inputs, labels = probe
        return Probe(inputs, labels)
    return Probe(probe)


def check_count(argument: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"`{argument}` must be a positive integer, not {value!r}")
    return value


def check_seconds(**values: object) -> None:
    for argument, given in values.items():
        value = math.nan if isinstance(given, bool) else given
        if not isinstance(value, (int, float)):
            value = math.nan
        if not (value > 0 or (argument == "backoff" and value == 0)):  # NaN is refused too
            raise ConfigError(f"`{argument}` must be a positive number of seconds, not {given!r}")


def resolve_server(server: str | None, http: httpx.Client | None) -> str:
    """The server's base URL: `server`, else `$LAYERWATCH_SERVER`, else the injected
    client's `base_url`, else `DEFAULT_SERVER`."""
    if server is None:
        server = os.environ.get(SERVER_ENV) or (str(http.base_url) if http is not None else "")
    server = (server or DEFAULT_SERVER).rstrip("/")
    if not server.startswith(("http://", "https://")):
        raise ConfigError(f"`server` must be an http:// or https:// URL, not {server!r}")
    return server
