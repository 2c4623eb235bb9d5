"""`StepClock`: the run's step, advanced by optimizer step hooks or by `Run.step()`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from layerwatch.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch.utils.hooks import RemovableHandle

    from layerwatch.capture.watch import Watch

__all__ = ["StepClock"]


class StepClock:
    """The step of a run: optimizer steps taken so far. Tells every `Watch` when it changes."""

    def __init__(self) -> None:
        self.step = 0
        self.watches: list[Watch] = []
        self._optimizer: torch.optim.Optimizer | None = None
        self._handle: RemovableHandle | None = None
        self._pre_handle: RemovableHandle | None = None
        self._users = 0  # watches that passed the optimizer

    @property
    def follows_optimizer(self) -> bool:
        """True while an optimizer's step hook advances the step."""
        return self._handle is not None

    def advance(self, *, manual: bool = False) -> None:
        """Called after each optimizer step: by its step hook, or by `Run.step()`
        (`manual`: then the weights and gradients are read now, after the update)."""
        for watch in list(self.watches):
            if manual:
                watch._before_update()
            watch._after_update(updated=not manual)
        self.step += 1
        for watch in self.watches:
            watch._on_step(self.step)

    def attach(self, optimizer: torch.optim.Optimizer | None) -> None:
        """Follow `optimizer`'s steps (shared by the watches passing the same one)."""
        if optimizer is None:
            return
        if self._optimizer is None:
            self._pre_handle = optimizer.register_step_pre_hook(self._on_optimizer_pre_step)
            self._handle = optimizer.register_step_post_hook(self._on_optimizer_step)
            self._optimizer = optimizer
        elif self._optimizer is not optimizer:
            raise ConfigError("a run counts the steps of one optimizer; another one is watched")
        self._users += 1

    def detach(self, watch: Watch) -> None:
        """Called by `Watch.remove()`; the last watch of the optimizer removes its hook."""
        if watch in self.watches:
            self.watches.remove(watch)
        if watch.optimizer is not None and self._handle is not None:
            self._users -= 1
            if self._users == 0:
                self._handle.remove()
                if self._pre_handle is not None:
                    self._pre_handle.remove()
                self._handle = self._pre_handle = self._optimizer = None

    def _on_optimizer_pre_step(
        self, optimizer: torch.optim.Optimizer, args: object, kwargs: object
    ) -> None:
        """Called by torch before each `optimizer.step()`."""
        for watch in self.watches:
            watch._before_update()

    def _on_optimizer_step(
        self, optimizer: torch.optim.Optimizer, args: object, kwargs: object
    ) -> None:
        """Called by torch after each `optimizer.step()`."""
        self.advance()
