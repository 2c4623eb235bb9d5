"""`Watch`: the hooks capturing one model, and the handles that remove them;
`StepClock`: the run's step, advanced by optimizer step hooks or by `Run.step()`.

A hook costs one attribute read on a step that is not captured. On a captured step
it hands the tensor to a reduction (see `reduce.py`): inline on accelerators, where
it queues a few kernels and never waits; on the reducer thread for CPU tensors,
after a private copy (see `reducer.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar, cast

from layerwatch import wire
from layerwatch.buffer import Record, SummaryRecord, TensorKey, TensorMeta
from layerwatch.errors import ConfigError
from layerwatch.wire import DEFAULT_BINS, DEFAULT_SAMPLE_SIZE

if TYPE_CHECKING:
    import torch
    from torch.utils.hooks import RemovableHandle

    from layerwatch.probeset import ProbeSet
    from layerwatch.reducer import Reducer

__all__ = [
    "CaptureOptions",
    "ProbeConfig",
    "StepClock",
    "Watch",
]

logger = logging.getLogger("layerwatch")

_ForwardHook = Callable[["torch.nn.Module", tuple[object, ...], object], None]


@dataclass(frozen=True)
class CaptureOptions:
    """What a `Watch` captures at each captured step; see `Run.watch()`."""

    activations: bool = True
    weights: bool = True
    gradients: bool = True
    bins: int | None = DEFAULT_BINS  # None: no histograms
    sample_size: int = DEFAULT_SAMPLE_SIZE  # 0: exact histograms
    unit_means: bool = True
    weight_change: bool = True


@dataclass(frozen=True)
class ProbeConfig:
    """The probe of a `Watch`: its inputs, how often it runs, and its caps."""

    probe_set: ProbeSet
    every: int | None  # steps; None: only at `Run.probe()`
    features: int
    submit: Callable[[wire.Probe, int], bool]
    attributions: int  # samples explained by integrated gradients
    attribution_steps: int


class Watch:
    """Hooks capturing a model's activations, weights and gradients; made by `Run.watch()`.

    On each captured step (see `Run` for what a step is): the output of every chosen
    leaf module in the first forward pass run with gradients enabled, and every
    chosen parameter and its gradient at the optimizer step, are each reduced to
    statistics (mean, std, min, max, mean absolute value, L2 norm, fraction of
    zeros, count of non-finite values, size), a histogram, per-unit means
    (activations) and weight change (weights). The model tree with its shapes is
    sent once, at the first forward pass.

    `remove()` detaches every hook, including the optimizer step hooks that `watch()`
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
        model: torch.nn.Module,
        modules: list[tuple[str, torch.nn.Module]],
        params: list[tuple[str, torch.nn.Parameter]],
        *,
        every: int,
        options: CaptureOptions,
        clock: StepClock,
        put: Callable[[Record], bool],
        reducer: Reducer,
        tensors: MutableMapping[TensorKey, TensorMeta],
        optimizer: torch.optim.Optimizer | None = None,
        probe: ProbeConfig | None = None,
    ) -> None:
        """Called by `Run.watch()`; not meant to be called directly."""
        import torch

        from layerwatch.params import ParamTracker
        from layerwatch.reduce import Summarizer, first_float_tensor, unit_dim
        from layerwatch.structure import TreeRecorder

        clock.attach(optimizer)  # first: it may refuse, and then no hook is left behind
        self._every = every
        self._options = options
        self._clock = clock
        self._put = put
        self._reducer = reducer
        self._tensors = tensors
        self._optimizer = optimizer
        self._names = tuple(name for name, _ in modules)
        self._model = model
        self._modules = modules
        self._probe = probe
        self._summarizer = Summarizer(bins=options.bins, sample_size=options.sample_size)
        self._first_float = first_float_tensor
        self._unit_dim = unit_dim
        self._enabled = True
        self._removed = False
        self._step = clock.step
        self._capturing = clock.step % every == 0
        self._seen: set[str] = set()  # modules recorded at this step: one record per step
        self._is_grad_enabled = torch.is_grad_enabled
        owners = dict(model.named_modules())
        for name, param in params:
            owner = owners.get(name.rpartition(".")[0], model)
            dtype = str(param.dtype).removeprefix("torch.")
            for kind in ("weight", "grad"):
                tensors[(name, kind)] = (type(owner).__name__, tuple(param.shape), dtype)
        self._params = ParamTracker(
            params, summarizer=self._summarizer, emit=self._emit,
            weights=options.weights, gradients=options.gradients,
            weight_change=options.weight_change, follow_grads=optimizer is None,
        )  # fmt: skip
        self._params.capturing = self._capturing
        self._tree = TreeRecorder(model, put)
        self._handles = []
        if options.activations:
            self._handles = [
                module.register_forward_hook(self._make_hook(name)) for name, module in modules
            ]
        clock.watches.append(self)

    @property
    def names(self) -> tuple[str, ...]:
        """Qualified names of the watched modules, as in `model.named_modules()`."""
        return self._names

    @property
    def parameters(self) -> tuple[str, ...]:
        """Qualified names of the watched parameters, as in `model.named_parameters()`."""
        return self._params.names

    @property
    def every(self) -> int:
        """Steps `k` with `k % every == 0` are captured."""
        return self._every

    @property
    def options(self) -> CaptureOptions:
        return self._options

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """The optimizer whose steps advance the run's step, if one was given."""
        return self._optimizer

    @property
    def has_probe(self) -> bool:
        """True when `Run.watch()` was given probe inputs."""
        return self._probe is not None

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
        self._tree.remove()
        self._params.after_step(self._step, updated=False)  # a weight record waiting for it
        self._params.remove()
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

    # -- called by the StepClock ---------------------------------------------------

    def _before_update(self) -> None:
        """Before the optimizer step (or at `run.step()`): weights and gradients."""
        if self._capturing:
            self._guarded("parameters", self._params.before_step, self._step)

    def _after_update(self, *, updated: bool) -> None:
        self._guarded("parameters", lambda: self._params.after_step(self._step, updated=updated))

    def _on_step(self, step: int) -> None:
        """Called by the run when the step advances (optimizer step or `run.step()`)."""
        self._step = step
        self._capturing = self._enabled and not self._removed and step % self._every == 0
        self._params.capturing = self._capturing
        if self._seen:
            self._seen.clear()
        if self._probe is not None and self._probe.every and step % self._probe.every == 0:
            self.probe()

    def probe(self) -> int:
        """Run the probe inputs through the model now (in eval mode, without gradients,
        leaving its state as it was) and queue the payloads; return how many. Only rank 0
        of a distributed run probes."""
        if self._probe is None or self._removed or _rank() != 0:
            return 0
        from layerwatch.probe import run_probe

        config = self._probe
        # Attributions run forwards with gradients on: not a training pass to record.
        capturing, self._capturing = self._capturing, False
        try:
            payloads = run_probe(
                self._model, config.probe_set, self._modules, step=self._step,
                features=config.features, attributions=config.attributions,
                attribution_steps=config.attribution_steps,
            )  # fmt: skip
        finally:
            self._capturing = capturing and not self._removed
        for payload in payloads:
            size = sum(len(layer.features) + len(layer.maps or b"") for layer in payload.layers)
            if payload.attributions is not None:
                size += len(payload.attributions.values)
            config.submit(payload, size)
        return len(payloads)

    # -- activations ---------------------------------------------------------------

    def _make_hook(self, name: str) -> _ForwardHook:
        seen = self._seen
        is_grad_enabled = self._is_grad_enabled

        # Under torch.compile, the check below is traced (a guard on one bool, so an
        # uncaptured step runs a graph without hooks) and `capture` is not: a captured
        # step runs a second compiled variant that leaves the graph at each module.
        @eager
        def capture(module: torch.nn.Module, output: object) -> None:
            if name in seen or not is_grad_enabled():  # accumulation / eval pass
                return
            self._guarded(name, self._capture, name, module, output)

        def hook(module: torch.nn.Module, args: tuple[object, ...], output: object) -> None:
            if self._capturing:  # the common case, False, returns at once
                capture(module, output)

        return hook

    def _capture(self, name: str, module: torch.nn.Module, output: object) -> None:
        tensor = self._first_float(output)
        self._seen.add(name)
        if tensor is None:  # integer or no tensor output: nothing to summarise
            return
        key: TensorKey = (name, "activation")
        module_type = type(module).__name__
        if key not in self._tensors:  # shape and dtype are host metadata: no sync
            dtype = str(tensor.dtype).removeprefix("torch.")
            self._tensors[key] = (module_type, tuple(tensor.shape), dtype)
        units = self._unit_dim(tensor.shape, module_type) if self._options.unit_means else None
        step, numel, summarizer = self._step, tensor.numel(), self._summarizer
        snapshot = tensor.detach()
        if snapshot.device.type == "cpu":
            snapshot = snapshot.clone()  # reduced later, on the reducer thread

        def job(sync: bool) -> Iterable[Record]:
            summary = summarizer.summarize(snapshot, units=units, sync=sync)
            return [SummaryRecord(step, name, "activation", numel, summary)]

        rows = 1 + (summarizer.bins is not None) + (units is not None)
        self._emit(snapshot.device, job, rows, snapshot.nbytes)

    def _emit(
        self,
        device: torch.device,
        job: Callable[[bool], Iterable[Record]],
        rows: int,
        nbytes: int,
    ) -> None:
        """Run `job` inline on accelerators (kernels queue up, nothing waits), or on the
        reducer thread for CPU tensors."""
        if device.type == "cpu":
            self._reducer.submit(lambda: job(True), nbytes, rows)
        else:
            for record in job(False):
                self._put(record)

    def _guarded(self, where: str, function: Callable[..., object], *args: object) -> None:
        try:
            function(*args)
        except Exception:
            self._enabled = False
            self._capturing = False
            self._params.capturing = False
            logger.warning(
                "layerwatch: disabling the watch of %d modules after its hook failed on `%s`",
                len(self._names), where, exc_info=True,
            )  # fmt: skip


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


_F = TypeVar("_F", bound=Callable[..., None])


def eager(function: _F) -> _F:
    """`function`, run eagerly even when called from a `torch.compile`d model."""
    import torch

    return cast("_F", torch.compiler.disable(function))  # type: ignore[no-untyped-call]


def _rank() -> int:
    import torch.distributed as dist

    return int(dist.get_rank()) if dist.is_available() and dist.is_initialized() else 0
