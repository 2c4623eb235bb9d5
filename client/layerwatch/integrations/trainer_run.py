"""`TrainerRun`: a `Run` whose step stays on a training framework's global step.

Both callbacks make one: its settings are checked when the callback is made, the
`Run` itself is made when training starts (a callback may be pickled to the worker
processes of a spawning strategy before that, and a run's threads may not).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pydantic
import torch

from layerwatch import wire
from layerwatch.errors import ConfigError
from layerwatch.logs import OnceLog
from layerwatch.options import Histograms, Probe, check_count, resolve_probe
from layerwatch.run import Run

if TYPE_CHECKING:
    from layerwatch.capture.selection import Selection
    from layerwatch.capture.watch import Watch
    from layerwatch.probe.inputs import ProbeInputs

__all__ = ["RunSettings", "TrainerRun", "unwrap_optimizer"]

# Attributes under which framework wrappers keep the torch optimizer they wrap:
# Lightning's `LightningOptimizer._optimizer`, accelerate's `AcceleratedOptimizer.optimizer`.
_WRAPPED = ("_optimizer", "optimizer")


@dataclass(frozen=True)
class RunSettings:
    """The arguments of a callback, checked when it is made."""

    server: str | None
    project: str
    name: str | None
    config: Mapping[str, object]
    id: str | None
    tags: tuple[str, ...]
    every: int
    include: Selection
    exclude: Selection
    histograms: int | Histograms | None
    probe: Probe | None

    @classmethod
    def check(
        cls,
        server: str | None,
        project: str,
        name: str | None,
        config: Mapping[str, object] | None,
        *,
        id: str | None,
        tags: Iterable[str],
        every: int,
        include: Selection,
        exclude: Selection,
        histograms: int | Histograms | None,
        probe: Probe | ProbeInputs | tuple[ProbeInputs, torch.Tensor | None] | None,
    ) -> RunSettings:
        """Raise `ConfigError` for what `Run` would refuse later, in the middle of training."""
        tags = (tags,) if isinstance(tags, str) else tuple(tags)
        try:
            wire.RunCreate(
                id=id, project=project, name=name, config=dict(config or {}), tags=list(tags)
            )
        except (pydantic.ValidationError, TypeError) as exc:
            raise ConfigError(f"invalid run settings: {exc}") from None
        return cls(
            server=server, project=project, name=name, config=dict(config or {}), id=id,
            tags=tags, every=check_count("every", every), include=include, exclude=exclude,
            histograms=histograms, probe=resolve_probe(probe),
        )  # fmt: skip

    def new_id(self) -> str:
        """The run id: the one given, or a new one (which rank 0 shares with the others)."""
        return self.id if self.id is not None else uuid.uuid4().hex


def unwrap_optimizer(optimizer: object) -> torch.optim.Optimizer | None:
    """The torch optimizer inside framework wrappers, whose step hooks torch calls."""
    for _ in range(8):  # wrappers of wrappers, never a cycle
        inner = next((getattr(optimizer, a) for a in _WRAPPED if hasattr(optimizer, a)), None)
        if not isinstance(inner, torch.optim.Optimizer):
            break
        optimizer = inner
    return optimizer if isinstance(optimizer, torch.optim.Optimizer) else None


class TrainerRun:
    """A `Run` kept on a trainer's global step: `watch()` at the start of training,
    `follow()` after each batch, `finish()` when training ends.

    With one optimizer, its step hook advances the run's step, and weights and
    gradients are read just before each update; that is the framework's global step
    as long as each global step is one optimizer step (both frameworks count them
    so, with or without gradient accumulation). With several optimizers (manual
    optimization in Lightning), `follow()` advances the run to the global step
    after the batch; weights and gradients are then read at that point.
    """

    def __init__(self, settings: RunSettings, run_id: str) -> None:
        self.settings = settings
        self.run = Run(
            settings.server, project=settings.project, name=settings.name,
            config=settings.config, id=run_id, tags=settings.tags, every=settings.every,
        )  # fmt: skip
        self._watch: Watch | None = None
        self._log_once = OnceLog()

    def watch(
        self, model: torch.nn.Module, optimizers: Sequence[object], global_step: int
    ) -> Watch:
        """Called when training starts. A resumed training starts past step 0."""
        self.follow(global_step)
        unwrapped = [unwrap_optimizer(o) for o in optimizers]
        optimizer = unwrapped[0] if len(unwrapped) == 1 else None
        s = self.settings
        self._watch = self.run.watch(
            model, optimizer, include=s.include, exclude=s.exclude, histograms=s.histograms,
            probe=s.probe,
        )  # fmt: skip
        return self._watch

    def follow(self, global_step: int) -> None:
        """Called after each batch: bring the run's step to the framework's."""
        run = self.run
        if run.closed or run.current_step == global_step:
            return
        counted = self._watch is not None and self._watch.optimizer is not None
        if counted or run.current_step > global_step:
            # E.g. a mixed-precision update skipped on overflow: the framework counts
            # it, torch never called the optimizer's step.
            self._log_once(
                "follow", logging.WARNING,
                f"the run is at step {run.current_step}, the trainer at global step "
                f"{global_step}: scalars keep the trainer's steps",
            )  # fmt: skip
            return
        while run.current_step < global_step:
            run.step()

    def log(self, values: Mapping[str, object], step: int) -> None:
        """Forward the numbers among `values` (tensors of one element, ints, floats)."""
        scalars: dict[str, float | torch.Tensor] = {}
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                if value.numel() == 1:
                    scalars[key] = value
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                scalars[key] = value
        if scalars and not self.run.closed:
            self.run.log(scalars, step=step)

    def probe_at_epoch_end(self) -> None:
        """Called at the end of each training epoch: a probe without its own `every`."""
        probe = self.settings.probe
        if probe is not None and probe.every is None and not self.run.closed:
            self.run.probe()

    def finish(self, status: wire.RunStatus) -> None:
        self.run.finish(status)
