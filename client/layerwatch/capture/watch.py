"""`Watch`: the hooks capturing one model, and the handles that remove them.

A hook costs one attribute read on a step that is not captured. On a captured step
it hands the tensor to a reduction (see `layerwatch.reduce`): inline on
accelerators, where it queues a few kernels and never waits; on the reducer thread
for CPU tensors, after a private copy (see `layerwatch.reduce.worker`). Weights and
gradients are read at the optimizer step (`capture.parameters`), the step itself is
counted by `capture.clock`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, MutableMapping
from types import TracebackType

import torch
from torch.compiler import is_compiling

from layerwatch.capture.clock import StepClock
from layerwatch.capture.eager import eager
from layerwatch.capture.model_tree import TreeRecorder
from layerwatch.capture.parameters import ParamTracker
from layerwatch.capture.sentinel import Sentinel
from layerwatch.capture.sentinel_hooks import SentinelHooks
from layerwatch.capture.sharing import ShareGate
from layerwatch.logs import logger
from layerwatch.options import CaptureOptions
from layerwatch.probe.prober import Prober
from layerwatch.records import ModelRecord, Record, SummaryRecord, TensorKey, TensorMeta
from layerwatch.reduce.statistics import Summarizer, first_float_tensor, unit_dim
from layerwatch.reduce.worker import Reducer

__all__ = ["Watch"]

_ForwardHook = Callable[[torch.nn.Module, tuple[object, ...], object], None]


class Watch:
    """Hooks capturing a model's activations, weights and gradients; made by `Run.watch()`.

    On each captured step (see `Run` for what a step is): the output of every chosen
    module (see `Run.watch()`) in the first forward pass run with gradients enabled,
    and every chosen parameter and its gradient at the optimizer step, are each reduced to
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

    On every step the non-finite sentinel (`capture.sentinel`) checks the same module
    outputs for NaN and inf, and gradients (accelerators) or weights (CPU, once an
    output turns); what it saw goes out at each captured step.

    A hook that fails (an unusual output type, say) disables its whole `Watch` with
    one logged warning; training goes on unaffected. A failing sentinel disables
    only itself, with one warning.
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
        name: str,
        prefixed: bool = False,
        optimizer: torch.optim.Optimizer | None = None,
        prober: Prober | None = None,
    ) -> None:
        """Called by `Run.watch()`; not meant to be called directly."""
        clock.attach(optimizer)
        self._name = name
        self._prefix = f"{name}/" if prefixed else ""
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
        self._prober = prober
        self._summarizer = Summarizer(bins=options.bins, sample_size=options.sample_size)
        self._enabled = True
        self._removed = False
        self._step = clock.step
        self._capturing = clock.step % every == 0
        # CPU bytes copied for the reducer by the capture in progress, and by the last
        # whole one: what the next capture is expected to need (see `_on_step`).
        self._copied = 0
        self._capture_bytes = 0
        self._sharing = ShareGate()  # module outputs the reducer may read without a copy
        self._seen: set[str] = set()  # modules recorded at this step: one record per step
        self._read = False  # parameters read at this step (an optimizer may step again)
        self._recorded = False  # anything captured yet
        self._is_grad_enabled = torch.is_grad_enabled
        owners = dict(model.named_modules())
        for name, param in params:
            owner = owners.get(name.rpartition(".")[0], model)
            dtype = str(param.dtype).removeprefix("torch.")
            for kind in ("weight", "grad"):
                meta = (type(owner).__name__, tuple(param.shape), dtype)
                tensors[(self._prefix + name, kind)] = meta
        self._params = ParamTracker(
            params, summarizer=self._summarizer, emit=self._emit,
            weights=options.weights, gradients=options.gradients,
            weight_change=options.weight_change, follow_grads=optimizer is None,
            reducer=reducer,
        )  # fmt: skip
        self._params.capturing = self._capturing
        self._params.prefix = self._prefix
        self._tree = TreeRecorder(model, self._put_tree)
        sentinel = None
        if options.sentinel:
            activations = len(modules) if options.activations else 0
            sentinel = Sentinel(activations, params, grads=options.gradients)
        self._nonfinite = SentinelHooks(sentinel, name)
        self._handles = []
        if options.activations:
            self._handles = [
                module.register_forward_hook(self._make_hook(name)) for name, module in modules
            ]
            self._handles += self._nonfinite.attach(model)  # after the modules' hooks
        clock.watches.append(self)

    @property
    def name(self) -> str:
        """The model's name in the run; the prefix of its tensor names (`<name>/<module>`)
        once the run watches more than one model."""
        return self._name

    @property
    def model(self) -> torch.nn.Module:
        """The watched model (inside any `torch.compile` or DDP wrapper)."""
        return self._model

    @property
    def names(self) -> tuple[str, ...]:
        """Qualified names of the watched modules, as in `model.named_modules()`."""
        return self._names

    @property
    def tensor_names(self) -> tuple[str, ...]:
        """The names the watched modules' activations are stored under."""
        return tuple(self._prefix + name for name in self._names)

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
        return self._prober is not None

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
        self._nonfinite.close(self._step, self._prefix, self._put)
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
        return f"<Watch {self._name} {len(self._names)} modules every={self._every} {state}>"

    # -- called by the Run -----------------------------------------------------------

    def _use_prefix(self) -> None:
        """Called when the run starts watching a second model: from now on this model's
        tensors are named `<name>/<module>`."""
        if self._prefix or self._removed:
            return
        if self._recorded:
            logger.warning(
                "layerwatch: the run now watches several models; the tensors of `%s` are "
                "named `%s/<module>` from step %d on, bare before",
                self._name, self._name, self._step,
            )  # fmt: skip
        self._prefix = self._params.prefix = f"{self._name}/"
        own = {*self._params.names, *self._names}
        for (name, kind), meta in list(self._tensors.items()):
            if name in own:
                self._tensors.setdefault((self._prefix + name, kind), meta)

    def _put_tree(self, record: ModelRecord) -> bool:
        """The model tree goes under the watch's name (the server keys trees by it)."""
        return self._put(record._replace(tree=record.tree.model_copy(update={"name": self._name})))

    # -- called by the StepClock ---------------------------------------------------

    def _before_update(self) -> None:
        """Before the optimizer step (or at `run.step()`): weights and gradients. An
        optimizer stepping several times per run step (a GAN's discriminator, say)
        is read at its first step."""
        if self._enabled:
            self._nonfinite.check_grads()
        if self._capturing and not self._read:
            self._read = self._recorded = True
            self._guarded("parameters", self._params.before_step, self._step)
        else:
            self._params.skip_update()

    def _after_update(self, *, updated: bool) -> None:
        self._guarded("parameters", lambda: self._params.after_step(self._step, updated=updated))

    def _on_step(self, step: int) -> None:
        """Called by the run when the step advances (optimizer step or `run.step()`)."""
        self._nonfinite.end_step(self._step)
        self._sharing.judge()  # outputs captured in the step that ended
        if self._copied:
            self._capture_bytes, self._copied = self._copied, 0
        self._step = step
        self._capturing = self._enabled and not self._removed and step % self._every == 0
        if self._capturing and not self._reducer.admit(self._capture_bytes):
            self._capturing = False  # skipped whole (and counted): the reducer is behind
        self._params.capturing = self._capturing
        self._read = False
        if self._seen:
            self._seen.clear()
        if self._capturing:
            self._report_nonfinite()
        if self._prober is not None and self._prober.due(step):
            self.probe()

    def probe(self) -> int:
        """Run the probe inputs through the model now (in eval mode, without gradients,
        leaving its state as it was) and queue the payloads; return how many."""
        if self._prober is None or self._removed:
            return 0
        # Attributions run forwards with gradients on: not a training pass to record,
        # nor to check for non-finite values.
        capturing, self._capturing = self._capturing, False
        try:
            with self._nonfinite.suspended():
                return self._prober.run(self._model, self._modules, self._step)
        finally:
            self._capturing = capturing and not self._removed

    def _report_nonfinite(self) -> None:
        """Called at each captured step and at `Run.flush()`."""
        self._nonfinite.report(self._prefix, self._put)

    # -- activations ---------------------------------------------------------------

    def _make_hook(self, name: str) -> _ForwardHook:
        seen = self._seen
        is_grad_enabled = self._is_grad_enabled
        nonfinite = self._nonfinite

        # Under torch.compile, the checks in `hook` are traced (guards on two flags, so
        # an uncaptured step runs a graph without hooks) and `capture` is not: a
        # captured step runs another compiled variant that leaves the graph at each
        # module. The sentinel's output check is left out of a compiled graph (traced,
        # `is_compiling()` is true), so uncaptured steps keep theirs whole; the
        # gradients it checks at the optimizer step, outside the graph, still name the
        # step a NaN appeared. It is not wrapped in `eager`: that wrapper alone cost
        # about 10 µs per module and step in eager mode.
        @eager
        def capture(module: torch.nn.Module, output: object) -> None:
            if name in seen or not is_grad_enabled():  # accumulation / eval pass
                return
            self._guarded(name, self._capture, name, module, output)

        def hook(module: torch.nn.Module, args: tuple[object, ...], output: object) -> None:
            if (
                nonfinite.sentinel is not None and self._enabled
                and not is_compiling() and is_grad_enabled()
            ):  # fmt: skip
                nonfinite.check_output(name, output)
            if self._capturing:  # the common case, False, returns at once
                capture(module, output)

        return hook

    def _capture(self, module_name: str, module: torch.nn.Module, output: object) -> None:
        # An attention block returns (output, weights or None): the first is its output.
        tensor = first_float_tensor(output)
        self._seen.add(module_name)
        if tensor is None:  # integer or no tensor output: nothing to summarise
            return
        self._recorded = True
        name = self._prefix + module_name
        key: TensorKey = (name, "activation")
        module_type = type(module).__name__
        if key not in self._tensors:  # shape and dtype are host metadata: no sync
            dtype = str(tensor.dtype).removeprefix("torch.")
            self._tensors[key] = (module_type, tuple(tensor.shape), dtype)
        units = unit_dim(tensor.shape, module) if self._options.unit_means else None
        step, numel, summarizer = self._step, tensor.numel(), self._summarizer
        snapshot, version = tensor.detach(), None
        if snapshot.device.type == "cpu":  # reduced later, on the reducer thread
            snapshot, version = self._sharing.hand_over(module_name, tensor, self._reducer.snapshot)
        reducer, sharing = self._reducer, self._sharing
        rows = 1 + (summarizer.bins is not None) + (units is not None)

        def job(sync: bool) -> Iterable[Record]:
            try:
                summary = summarizer.summarize(snapshot, units=units, sync=sync)
            finally:
                reducer.release(snapshot)
            if not sharing.intact(module_name, snapshot, version):
                reducer.count_dropped(rows)
                return []
            return [SummaryRecord(step, name, "activation", numel, summary)]

        self._emit(snapshot.device, job, rows, snapshot.nbytes)  # held, shared or copied

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
            self._copied += nbytes  # held for the reducer: copies, or tensors it shares
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
