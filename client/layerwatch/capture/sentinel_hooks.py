"""`SentinelHooks`: a `Watch`'s sentinel as its hooks call it.

The checks themselves are `capture.sentinel`; this is how one watch runs them:
the model's own forward hooks (its output stands for its modules' outputs on the
CPU), the calls at the optimizer step, and the rule that a sentinel which raises
is switched off with one warning while the watch goes on capturing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch.compiler import is_compiling
from torch.utils.hooks import RemovableHandle

from layerwatch.capture.sentinel import Sentinel
from layerwatch.logs import logger
from layerwatch.records import NonfiniteRecord

__all__ = ["SentinelHooks"]


class SentinelHooks:
    """Holds a watch's `Sentinel`; `sentinel` is None when there is none, once it
    failed, and while a probe runs."""

    def __init__(self, sentinel: Sentinel | None, watch_name: str) -> None:
        self.sentinel = sentinel
        self._watch_name = watch_name
        self._closed = False

    def attach(self, model: torch.nn.Module) -> list[RemovableHandle]:
        """Hook the watched model's forward pass; call it after the modules' own hooks,
        so that the model's output hook runs after its own capture hook."""
        if self.sentinel is None:
            return []
        return [
            model.register_forward_pre_hook(self._enter_model),
            model.register_forward_hook(self._exit_model),
        ]

    def check_output(self, module_name: str, output: object) -> None:
        """Called by a module's forward hook, in passes with gradients, outside any
        compiled graph, while `sentinel` is set (the caller reads it: the hot path)."""
        try:
            self.sentinel.check_output(module_name, output)  # type: ignore[union-attr]
        except Exception:
            self._failed()

    def check_grads(self) -> None:
        """Called before the optimizer step (or at `run.step()`)."""
        if self.sentinel is not None:
            self._guard(self.sentinel.check_grads)

    def end_step(self, step: int) -> None:
        """Called when step `step` ends."""
        if self.sentinel is not None:
            self._guard(self.sentinel.end_step, step)

    def report(self, prefix: str, put: Callable[[NonfiniteRecord], object]) -> None:
        """Called at each captured step, at `Run.flush()` and at `remove()`: queue what
        the sentinel saw since its last report (read back on the spooler thread)."""
        if self.sentinel is not None:
            self._guard(self.sentinel.report, prefix, put)

    @contextmanager
    def suspended(self) -> Iterator[None]:
        """No checks inside: probes and attributions are not training passes."""
        sentinel, self.sentinel = self.sentinel, None
        try:
            yield
        finally:
            if not self._closed:
                self.sentinel = sentinel

    def close(self, step: int, prefix: str, put: Callable[[NonfiniteRecord], object]) -> None:
        """Called by `Watch.remove()`: end the step, report, and check no more."""
        self.end_step(step)
        self.report(prefix, put)
        self.sentinel, self._closed = None, True

    def _enter_model(self, module: torch.nn.Module, args: tuple[object, ...]) -> None:
        sentinel = self.sentinel
        if sentinel is not None and not is_compiling():
            sentinel.enter_model()  # appends to a list: nothing to fail

    def _exit_model(
        self, module: torch.nn.Module, args: tuple[object, ...], output: object
    ) -> None:
        sentinel = self.sentinel
        if sentinel is not None and not is_compiling():
            self._guard(sentinel.exit_model, output)

    def _guard(self, function: Callable[..., object], *args: object) -> None:
        try:
            function(*args)
        except Exception:
            self._failed()

    def _failed(self) -> None:
        """Called in an `except` block: the sentinel raised."""
        self.sentinel = None
        logger.warning(
            "layerwatch: disabling the non-finite sentinel of `%s` after it failed",
            self._watch_name, exc_info=True,
        )  # fmt: skip
