"""`Prober`: the probe of one `Watch`: its checked inputs, when it runs, where its
payloads go."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from layerwatch import wire
from layerwatch.distributed import current_rank
from layerwatch.errors import ConfigError
from layerwatch.logs import logger
from layerwatch.options import Probe
from layerwatch.probe.attribution import require_captum
from layerwatch.probe.capture import check_probe_options, run_probe
from layerwatch.probe.inputs import ProbeSet

__all__ = ["Prober"]

Submit = Callable[[wire.Probe, int], bool]
"""Queues a payload of about `nbytes` packed bytes for the sender; False if dropped."""


class Prober:
    """Runs `options`' inputs through a model's chosen modules; made by `Run.watch()`.

    Raises `ConfigError` for inputs `ProbeSet` refuses, or attributions asked of
    inputs that are not one float tensor (or without Captum installed).
    """

    def __init__(self, options: Probe, submit: Submit) -> None:
        if options.attributions:
            require_captum()
        check_probe_options(features=options.features, maps=16, map_size=32, max_channels=64,
                            batch_size=256)  # fmt: skip
        self._set = ProbeSet(options.inputs, options.labels)  # type: ignore[arg-type]
        if options.attributions and self._set.single_input(1, None) is None:
            raise ConfigError("probe `attributions` need probe inputs of one float tensor")
        self._options = options
        self._submit = submit
        self._reported: set[tuple[str, str]] = set()  # (layer, reason) already warned of

    def due(self, step: int) -> bool:
        """True when the probe runs by itself at `step` (`Probe(every=...)`)."""
        every = self._options.every
        return every is not None and step % every == 0

    def run(self, model: nn.Module, modules: Sequence[tuple[str, nn.Module]], step: int) -> int:
        """Probe `model` now and queue the payloads; return how many. Only rank 0 of a
        distributed run probes."""
        if current_rank() != 0:
            return 0
        options = self._options
        payloads = run_probe(
            model, self._set, modules, step=step, features=options.features,
            attributions=options.attributions, attribution_steps=options.attribution_steps,
        )  # fmt: skip
        for payload in payloads:
            self._report(payload.skipped, step)
            size = sum(len(layer.features) + len(layer.maps or b"") for layer in payload.layers)
            if payload.attributions is not None:
                size += len(payload.attributions.values)
            self._submit(payload, size)
        return len(payloads)

    def _report(self, skipped: Sequence[wire.ProbeSkipped], step: int) -> None:
        """Warn of each layer left out, once per layer and reason."""
        new = [s for s in skipped if (s.name, s.reason) not in self._reported]
        if not new:
            return
        self._reported.update((s.name, s.reason) for s in new)
        logger.warning(
            "layerwatch: the probe at step %d leaves out %s",
            step, "; ".join(f"`{s.name}` ({s.reason})" for s in new),
        )  # fmt: skip
