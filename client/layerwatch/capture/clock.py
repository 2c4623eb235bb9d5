"""`StepClock`: the run's step, advanced by optimizer step hooks or by `Run.step()`.

A run may follow several optimizers (a GAN's generator and discriminator): the first
one a `watch()` was given counts the run's steps; each one marks when the weights
and gradients of the models watched with it are read. When the counting optimizer
is no longer watched, the next one followed counts.

Gradients are read when they are final for the step: in the optimizer's step
pre-hook, or, when `step()` is given a closure (LBFGS; SGD or Adam called as
`step(closure)`; Lightning's automatic optimization), right after the closure's
first call returns, since the closure runs the backward pass inside `step()`. LBFGS
calls it again at the weights it moves to; the first call's gradients are those at
the weights the step starts from, the ones that go with the step's weights and with
its first forward pass, the one whose activations are recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch.utils.hooks import RemovableHandle

    from layerwatch.capture.watch import Watch

__all__ = ["StepClock"]


@dataclass
class _Followed:
    """An optimizer whose step hooks the run holds, and the watches passing it."""

    optimizer: torch.optim.Optimizer
    handles: tuple[RemovableHandle, RemovableHandle]
    users: int = 0
    unread: list[Watch] = field(default_factory=list)  # waiting for the closure's backward


class StepClock:
    """The step of a run: steps taken so far by the optimizer that counts them. Tells
    every `Watch` when it changes."""

    def __init__(self) -> None:
        self.step = 0
        self.watches: list[Watch] = []
        self._followed: list[_Followed] = []  # in the order watched; the first counts

    @property
    def follows_optimizer(self) -> bool:
        """True while an optimizer's step hook advances the step."""
        return bool(self._followed)

    @property
    def counting(self) -> torch.optim.Optimizer | None:
        """The optimizer whose steps are the run's steps."""
        return self._followed[0].optimizer if self._followed else None

    def advance(self, *, manual: bool = False) -> None:
        """Called after each step: by the counting optimizer's step hook, or by
        `Run.step()` (`manual`: then the weights and gradients are read now, after the
        update)."""
        if manual:
            for watch in list(self.watches):
                watch._before_update()
                watch._after_update(updated=False)
        self.step += 1
        for watch in self.watches:
            watch._on_step(self.step)

    def attach(self, optimizer: torch.optim.Optimizer | None) -> None:
        """Follow `optimizer`'s steps (shared by the watches passing the same one)."""
        if optimizer is None:
            return
        followed = self._find(optimizer)
        if followed is None:
            handles = (
                optimizer.register_step_pre_hook(self._make_pre_hook(optimizer)),
                optimizer.register_step_post_hook(self._make_post_hook(optimizer)),
            )
            followed = _Followed(optimizer, handles)
            self._followed.append(followed)
        followed.users += 1

    def detach(self, watch: Watch) -> None:
        """Called by `Watch.remove()`; the last watch of an optimizer removes its hooks."""
        if watch in self.watches:
            self.watches.remove(watch)
        followed = None if watch.optimizer is None else self._find(watch.optimizer)
        if followed is None:
            return
        followed.users -= 1
        if watch in followed.unread:
            followed.unread.remove(watch)
        if followed.users == 0:
            for handle in followed.handles:
                handle.remove()
            self._followed.remove(followed)

    def _find(self, optimizer: torch.optim.Optimizer) -> _Followed | None:
        return next((f for f in self._followed if f.optimizer is optimizer), None)

    def _concerned(self, optimizer: torch.optim.Optimizer) -> list[Watch]:
        """The watches that read their parameters at `optimizer`'s steps: those given
        it, and those given none when it counts the run's steps."""
        counts = optimizer is self.counting
        return [
            w for w in self.watches if w.optimizer is optimizer or (w.optimizer is None and counts)
        ]

    def _make_pre_hook(
        self, optimizer: torch.optim.Optimizer
    ) -> Callable[
        [torch.optim.Optimizer, tuple[object, ...], dict[str, object]],
        tuple[tuple[object, ...], dict[str, object]] | None,
    ]:
        def pre_hook(
            opt: torch.optim.Optimizer, args: tuple[object, ...], kwargs: dict[str, object]
        ) -> tuple[tuple[object, ...], dict[str, object]] | None:
            """Called by torch before each `optimizer.step()`."""
            followed = self._find(optimizer)
            if followed is None:
                return None
            watches = self._concerned(optimizer)
            closure = _closure_of(args, kwargs)
            if closure is None:
                for watch in watches:
                    watch._before_update()
                return None
            followed.unread = watches
            return _put_closure(_reading_after(closure, followed), args, kwargs)

        return pre_hook

    def _make_post_hook(
        self, optimizer: torch.optim.Optimizer
    ) -> Callable[[torch.optim.Optimizer, tuple[object, ...], dict[str, object]], None]:
        def post_hook(
            opt: torch.optim.Optimizer, args: tuple[object, ...], kwargs: dict[str, object]
        ) -> None:
            """Called by torch after each `optimizer.step()`."""
            followed = self._find(optimizer)
            if followed is None:
                return
            # A closure never called (an optimizer ignoring it): read after the update.
            unread, followed.unread = followed.unread, []
            for watch in unread:
                watch._before_update()
            for watch in self._concerned(optimizer):
                watch._after_update(updated=watch not in unread)
            if optimizer is self.counting:
                self.advance()

        return post_hook


def _reading_after(closure: Callable[[], object], followed: _Followed) -> Callable[[], object]:
    """`closure`, which reads the parameters of the watches waiting in `followed` once
    its first call returns (its backward pass has run)."""

    def read_after_closure() -> object:
        loss = closure()
        unread, followed.unread = followed.unread, []
        for watch in unread:
            watch._before_update()
        return loss

    return read_after_closure


# torch calls the step hooks with `step()`'s arguments, the optimizer (`self`) first.


def _closure_of(args: tuple[object, ...], kwargs: dict[str, object]) -> Callable[[], object] | None:
    """The closure `step()` was called with: its first argument after `self`, or
    `closure=`."""
    closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
    return closure if callable(closure) else None


def _put_closure(
    closure: Callable[[], object], args: tuple[object, ...], kwargs: dict[str, object]
) -> tuple[tuple[object, ...], dict[str, object]]:
    if "closure" in kwargs:
        return args, {**kwargs, "closure": closure}
    return (args[0], closure, *args[2:]), kwargs
