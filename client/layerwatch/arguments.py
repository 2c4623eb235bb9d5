"""The arguments of `Run` and `Run.watch()`: checked (a mistake raises `ConfigError`
before training starts) and resolved into what the run uses."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from layerwatch import wire
from layerwatch.errors import ConfigError
from layerwatch.hooks import CaptureOptions, ProbeConfig

if TYPE_CHECKING:
    import httpx
    import torch

__all__ = [
    "DEFAULT_SERVER",
    "capture_options",
    "check_count",
    "check_seconds",
    "make_client",
    "make_probe_config",
    "owner",
    "resolve_server",
]

DEFAULT_SERVER = "http://127.0.0.1:8000"
SERVER_ENV = "LAYERWATCH_SERVER"
TOKEN_ENV = "LAYERWATCH_TOKEN"


DEFAULT_ATTRIBUTION_STEPS = 32
"""Points on each integrated-gradient path (`Run.watch(attribution_steps=...)`)."""


def make_probe_config(
    probe: object,
    every: int | None,
    features: int,
    submit: Callable[[wire.Probe, int], bool],
    attributions: int = 0,
    attribution_steps: int = DEFAULT_ATTRIBUTION_STEPS,
) -> ProbeConfig | None:
    """The probe settings of `Run.watch()`, checked; None when it has no probe."""
    if probe is None:
        if every is not None or attributions:
            raise ConfigError("`probe_every` and `probe_attributions` need `probe=` inputs")
        return None
    from layerwatch.probe import check_probe_options
    from layerwatch.probeset import ProbeSet

    every = None if every is None else check_count("probe_every", every)
    check_count("attribution_steps", attribution_steps)
    if (
        isinstance(attributions, bool)
        or not isinstance(attributions, int)
        or not (0 <= attributions <= wire.MAX_ATTRIBUTION_SAMPLES)
    ):
        raise ConfigError(
            f"`probe_attributions` must be 0-{wire.MAX_ATTRIBUTION_SAMPLES}, not {attributions!r}"
        )
    if attributions:
        from layerwatch.attribution import require_captum

        require_captum()
    check_probe_options(features=features, maps=16, map_size=32, max_channels=64,
                        batch_size=256)  # fmt: skip
    if isinstance(probe, tuple) and len(probe) == 2:
        inputs, labels = probe
    else:
        inputs, labels = probe, None
    probe_set = ProbeSet(inputs, labels)
    if attributions and probe_set.single_input(1, None) is None:
        raise ConfigError("`probe_attributions` needs probe inputs of one float tensor")
    return ProbeConfig(probe_set, every, features, submit, attributions, attribution_steps)


def capture_options(**values: object) -> CaptureOptions:
    for flag in ("activations", "weights", "gradients", "unit_means", "weight_change"):
        if not isinstance(values[flag], bool):
            raise ConfigError(f"`{flag}` must be True or False, not {values[flag]!r}")
    bins = values["bins"]
    if bins is not None and (
        isinstance(bins, bool) or not isinstance(bins, int) or not 1 <= bins <= wire.MAX_BINS
    ):
        raise ConfigError(
            f"`bins` must be None or an integer from 1 to {wire.MAX_BINS}, not {bins!r}"
        )
    size = values["sample_size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ConfigError(f"`sample_size` must be 0 (exact) or a positive integer, not {size!r}")
    return CaptureOptions(**values)  # type: ignore[arg-type]


def owner(model: torch.nn.Module, parameter: str) -> torch.nn.Module:
    path = parameter.rpartition(".")[0]
    return model.get_submodule(path) if path else model


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
    if server is None:
        server = os.environ.get(SERVER_ENV) or (str(http.base_url) if http is not None else "")
    server = (server or DEFAULT_SERVER).rstrip("/")
    if not server.startswith(("http://", "https://")):
        raise ConfigError(f"`server` must be an http:// or https:// URL, not {server!r}")
    return server


def make_client(timeout: float) -> httpx.Client:
    import httpx

    from layerwatch import __version__

    headers = {"User-Agent": f"layerwatch/{__version__}"}
    token = os.environ.get(TOKEN_ENV)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.Client(timeout=timeout, headers=headers)
