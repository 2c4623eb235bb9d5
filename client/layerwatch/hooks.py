"""`Watch`: forward hooks on a model's leaf modules, and the handles that remove them;
`StepClock`: the run's step, advanced by an optimizer step hook or by `Run.step()`.

A hook costs one attribute read on a step that is not captured. On a captured step
it reduces the module's output to a small statistics tensor on the output's device
(see `reduce.py`) and puts it on the run's queue; it never waits for the device.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable, Iterable, MutableMapping
from types import TracebackType
from typing import TYPE_CHECKING

from layerwatch.buffer import StatRecord
from layerwatch.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch.utils.hooks import RemovableHandle

    from layerwatch import wire
    from layerwatch.buffer import TensorMeta

__all__ = ["StepClock", "Watch", "select_leaves"]

logger = logging.getLogger("layerwatch")

Patterns = str | Iterable[str] | None
_ForwardHook = Callable[["torch.nn.Module", tuple[object, ...], object], None]


class Watch:
    """Hooks recording activation statistics of a model's leaf modules; made by `Run.watch()`.

    Every chosen module gets one forward hook. On each captured step (see `Run` for
    what a step is), the first forward pass run with gradients enabled records the
    mean, std, min, max, mean absolute value, L2 norm, fraction of zeros, count of
    non-finite values and size of each module's output.

    `remove()` detaches every hook, including the optimizer step hook that `watch()`
    registered; it also runs when the `Run` closes. Afterwards the model and the
    optimizer are exactly as before.

    Usage:

    ```python
    watch = run.watch(model, optimizer, every=100, include="encoder.*")
    ...
    watch.remove()
    ```

    A hook that fails (an unusual output type, say) disables its whole `Watch` with
    one logged warning; training goes on unaffected.
    """

    def __init__(
        self,
        modules: list[tuple[str, torch.nn.Module]],
        *,
        every: int,
        clock: StepClock,
        put: Callable[[StatRecord], bool],
        tensors: MutableMapping[tuple[str, wire.Kind], TensorMeta],
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        """Called by `Run.watch()`; not meant to be called directly."""
        import torch

        from layerwatch.reduce import activation_stats, first_float_tensor

        clock.attach(optimizer)  # first: it may refuse, and then no hook is left behind
        self._every = every
        self._clock = clock
        self._put = put
        self._tensors = tensors
        self._optimizer = optimizer
        self._names = tuple(name for name, _ in modules)
        self._reduce = activation_stats
        self._first_float = first_float_tensor
        self._enabled = True
        self._removed = False
        self._step = clock.step
        self._capturing = clock.step % every == 0
        self._seen: set[str] = set()  # modules recorded at this step: one record per step
        self._is_grad_enabled = torch.is_grad_enabled
        self._handles = [
            module.register_forward_hook(self._make_hook(name)) for name, module in modules
        ]
        clock.watches.append(self)

    @property
    def names(self) -> tuple[str, ...]:
        """Qualified names of the watched modules, as in `model.named_modules()`."""
        return self._names

    @property
    def every(self) -> int:
        """Steps `k` with `k % every == 0` are captured."""
        return self._every

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """The optimizer whose steps advance the run's step, if one was given."""
        return self._optimizer

    @property
    def active(self) -> bool:
        """False once removed, or disabled by a failing hook."""
        return self._enabled and not self._removed

    def remove(self) -> None:
        """Detach every hook this `Watch` registered. Calling it again does nothing.

        Usage:

        ```python
        watch = run.watch(model)
        watch.remove()
        assert not any(m._forward_hooks for m in model.modules())
        ```
        """
        if self._removed:
            return
        self._removed = True
        self._capturing = False
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._clock.detach(self)

    def __enter__(self) -> Watch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "removed" if self._removed else "active" if self._enabled else "disabled"
        return f"<Watch {len(self._names)} modules every={self._every} {state}>"

    def _on_step(self, step: int) -> None:
        """Called by the run when the step advances (optimizer step or `run.step()`)."""
        self._step = step
        self._capturing = self._enabled and not self._removed and step % self._every == 0
        if self._seen:
            self._seen.clear()

    def _make_hook(self, name: str) -> _ForwardHook:
        seen = self._seen
        is_grad_enabled = self._is_grad_enabled

        def hook(module: torch.nn.Module, args: tuple[object, ...], output: object) -> None:
            if not self._capturing:  # the common case: return before anything else
                return
            if name in seen or not is_grad_enabled():  # accumulation / eval pass
                return
            self._capture(name, module, output)

        return hook

    def _capture(self, name: str, module: torch.nn.Module, output: object) -> None:
        try:
            tensor = self._first_float(output)
            self._seen.add(name)
            if tensor is None:  # integer or no tensor output: nothing to summarise
                return
            key: tuple[str, wire.Kind] = (name, "activation")
            if key not in self._tensors:  # shape and dtype are host metadata: no sync
                dtype = str(tensor.dtype).removeprefix("torch.")
                self._tensors[key] = (type(module).__name__, tuple(tensor.shape), dtype)
            stats = self._reduce(tensor)  # (NUM_STATS,) on tensor.device
            self._put(StatRecord(self._step, name, "activation", stats, tensor.numel()))
        except Exception:
            self._enabled = False
            self._capturing = False
            logger.warning(
                "layerwatch: disabling the watch of %d modules after its hook failed on `%s`",
                len(self._names), name, exc_info=True,
            )  # fmt: skip


class StepClock:
    """The step of a run: optimizer steps taken so far. Tells every `Watch` when it changes."""

    def __init__(self) -> None:
        self.step = 0
        self.watches: list[Watch] = []
        self._optimizer: torch.optim.Optimizer | None = None
        self._handle: RemovableHandle | None = None
        self._users = 0  # watches that passed the optimizer

    @property
    def follows_optimizer(self) -> bool:
        """True while an optimizer's step hook advances the step."""
        return self._handle is not None

    def advance(self) -> None:
        """Called after each optimizer step: by its step hook, or by `Run.step()`."""
        self.step += 1
        for watch in self.watches:
            watch._on_step(self.step)

    def attach(self, optimizer: torch.optim.Optimizer | None) -> None:
        """Follow `optimizer`'s steps (shared by the watches passing the same one)."""
        if optimizer is None:
            return
        if self._optimizer is None:
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
                self._handle = self._optimizer = None

    def _on_optimizer_step(
        self, optimizer: torch.optim.Optimizer, args: object, kwargs: object
    ) -> None:
        """Called by torch after each `optimizer.step()`."""
        self.advance()


def select_leaves(
    model: torch.nn.Module, include: Patterns = None, exclude: Patterns = None
) -> list[tuple[str, torch.nn.Module]]:
    """Leaf modules of `model` (no children) whose qualified name matches a pattern of
    `include` (all when None) and none of `exclude`; `fnmatch` patterns, e.g. `"enc.*"`.

    The model itself, when it is a leaf, is named after its class.
    """
    includes, excludes = _patterns(include, "include"), _patterns(exclude, "exclude")
    chosen = []
    for name, module in model.named_modules():
        if next(module.children(), None) is not None:
            continue
        if includes is not None and not any(fnmatch.fnmatchcase(name, p) for p in includes):
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in excludes or ()):
            continue
        chosen.append((name or type(model).__name__, module))
    if not chosen:
        raise ConfigError(
            f"no leaf module of {type(model).__name__} matches include={include!r} "
            f"exclude={exclude!r}"
        )
    return chosen


def _patterns(patterns: Patterns, argument: str) -> list[str] | None:
    if patterns is None:
        return None
    if isinstance(patterns, str):
        return [patterns]
    result = list(patterns)
    if not all(isinstance(p, str) for p in result):
        raise ConfigError(f"`{argument}` takes a pattern or a list of patterns, not {patterns!r}")
    return result
