"""`ParamTracker`: weights, weight change and gradients of a model's parameters.

Read at the optimizer step, the one point where both are final: the optimizer's
step *pre*-hook sees the weights the step's forward passes used and the gradients
the step applies, once per optimizer step however many micro-batches accumulated
into them and after DDP has averaged them across ranks. (A per-parameter
`register_post_accumulate_grad_hook` fires once per micro-batch and, under DDP,
before that all-reduce; it is used only when no optimizer is given, to keep a
reference to each step's gradient until `Run.step()`.) The step *post*-hook then
gives the update-to-weight ratio of that one step.

Weight change keeps two copies of every tracked parameter on its device: the
weights when the model was watched and those of the previous capture. The copies
of CPU tensors are lent by the reducer's `SnapshotPool` and handed back as soon as
their last reader is done: a gradient's and a weight's after their job, the
previous capture's weights when the next capture replaces them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from layerwatch import wire
from layerwatch.capture.sharing import ShareGate
from layerwatch.records import Record, SummaryRecord
from layerwatch.reduce.statistics import Summarizer, Summary, relative_change
from layerwatch.reduce.worker import Reducer

if TYPE_CHECKING:
    from torch.utils.hooks import RemovableHandle

__all__ = ["Emit", "ParamTracker"]

Emit = Callable[["torch.device", Callable[[bool], Iterable[Record]], int, int], None]
"""Run a job on a device: `emit(device, job, rows, nbytes)` calls `job(sync)` inline or on
the reducer thread; `rows` are counted as dropped if it cannot run, `nbytes` is what it
holds."""

_NAN = math.nan


_L2 = wire.STAT_INDEX["l2"]


@dataclass
class _State:
    param: torch.nn.Parameter
    init: torch.Tensor | None  # weights when watched (weight change only)
    prev: torch.Tensor | None = None  # weights at the previous capture
    prev_norm: torch.Tensor | None = None  # and their L2 norm (from their statistics)
    init_norm: torch.Tensor | None = None
    pending: tuple[int, torch.Tensor, Summary, torch.Tensor] | None = None
    grad: torch.Tensor | None = None  # without an optimizer: this step's gradient
    # The last update ratio, ||after - before|| / ||before||, with its two tensors: at
    # every=1, `after` is the next capture's weights and `before` its `prev`, and the
    # ratio is its change since the previous capture (a pass over both saved).
    ratio: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None


class ParamTracker:
    """Captures the named parameters at each captured optimizer step."""

    def __init__(
        self,
        params: list[tuple[str, torch.nn.Parameter]],
        *,
        summarizer: Summarizer,
        emit: Emit,
        weights: bool,
        gradients: bool,
        weight_change: bool,
        follow_grads: bool,
        reducer: Reducer,
    ) -> None:
        self._summarizer = summarizer
        self._reducer = reducer
        self._sharing = ShareGate()  # gradients the reducer may read without a copy
        self._emit = emit
        self._weights = weights
        self._gradients = gradients
        self._change = weights and weight_change
        self._states: dict[str, _State] = {}
        self._handles: list[RemovableHandle] = []
        self._awaiting_update = False  # weights captured before this step's update
        # Weights after the last captured update, and its step: they are also the
        # weights before the next step, so with every=1 one copy per step serves both.
        self._after: tuple[int, dict[str, torch.Tensor]] | None = None
        self.capturing = False
        self.prefix = ""  # of the record names: the model's name when a run watches several
        with torch.no_grad():
            for name, param in params:
                init = param.detach().clone() if self._change else None
                self._states[name] = _State(param, init)
        if gradients and follow_grads:
            for state in self._states.values():
                if state.param.requires_grad:
                    register = state.param.register_post_accumulate_grad_hook
                    self._handles.append(register(self._make_grad_hook(state)))  # type: ignore[no-untyped-call]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._states)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.capturing = False
        self._drop_after()
        states = list(self._states.values())

        def job() -> list[Record]:  # after the jobs still reading the copies
            for state in states:
                self._reducer.release(state.prev)
                state.prev = None
            return []

        self._reducer.submit(job, 0, 0)

    def skip_update(self) -> None:
        """Called before an update that is not captured: the weights kept after the last
        captured update are no longer the current ones."""
        self._drop_after()

    def _drop_after(self) -> None:
        if self._after is not None:
            self._reducer.release(*self._after[1].values())
            self._after = None

    def before_step(self, step: int) -> None:
        """At captured step `step`, before its update: weights and gradients."""
        after = {}
        if self._after is not None and self._after[0] == step - 1:
            after = dict(self._after[1])  # its hold passes to the weight snapshots below
            self._after = None
        self._drop_after()
        states = self._states
        self._sharing.judge(lambda name: states[name].param.grad)
        grads: list[tuple[str, torch.Tensor, int | None]] = []  # name, tensor, version if shared
        weights: list[tuple[str, _State, torch.Tensor]] = []
        with torch.no_grad():
            for name, state in self._states.items():
                if self._gradients:
                    grad = state.param.grad if state.grad is None else state.grad
                    state.grad = None
                    if grad is not None:
                        grads.append(self._grad_for_reducer(name, grad))
                if self._weights:
                    weight = after.pop(name, None)
                    if weight is None:
                        weight = self._private(state.param, keep=self._change)
                    weights.append((name, state, weight))
        self._reducer.release(*after.values())  # parameters no longer tracked
        summarizer, change, prefix, release = (
            self._summarizer, self._change, self.prefix, self._reducer.release
        )  # fmt: skip
        hist = summarizer.bins is not None

        def job(sync: bool) -> Iterable[Record]:
            records: list[Record] = []
            try:
                for name, grad, version in grads:
                    summary = summarizer.summarize(grad, units=None, sync=sync)
                    release(grad)
                    if not self._sharing.intact(name, grad, version):
                        self._reducer.count_dropped(1 + hist)
                        continue
                    numel = grad.numel()
                    records.append(SummaryRecord(step, prefix + name, "grad", numel, summary))
                for name, state, weight in weights:
                    summary = summarizer.summarize(weight, units=None, sync=sync)
                    if change:  # the snapshot is kept as `state.prev`; the old one goes
                        old = state.prev
                        records += _hold_weight(step, prefix + name, state, weight, summary)
                        if old is not weight:
                            release(old)
                    else:
                        numel = weight.numel()
                        records.append(SummaryRecord(step, prefix + name, "weight", numel, summary))
                        release(weight)
            except BaseException:
                release(*(g for _, g, _ in grads), *(w for _, _, w in weights if not change))
                raise
            return records

        rows = len(grads) * (1 + hist) + len(weights) * (1 + hist + change)
        self._emit_grouped([g for _, g, _ in grads] + [w for _, _, w in weights], job, rows)
        self._awaiting_update = change

    def after_step(self, step: int, *, updated: bool = True) -> None:
        """After the update of captured step `step`: its update-to-weight ratio. With
        `updated=False` (the update was not seen) the ratio is sent as NaN."""
        if not self._awaiting_update:
            return
        self._awaiting_update = False
        afters: dict[str, torch.Tensor] = {}
        if updated:
            with torch.no_grad():
                afters = {n: self._private(s.param, keep=True) for n, s in self._states.items()}
            for after in afters.values():
                self._reducer.hold(after)  # one holder here, one in the job
            self._after = (step, afters)
        states, prefix, release = self._states, self.prefix, self._reducer.release

        def job(sync: bool) -> Iterable[Record]:
            try:
                return [
                    _pending_record(prefix + name, state, afters.get(name))
                    for name, state in states.items()
                    if state.pending is not None
                ]
            finally:
                release(*afters.values())

        self._emit_grouped(list(afters.values()), job, 0)

    def _emit_grouped(
        self, tensors: list[torch.Tensor], job: Callable[[bool], Iterable[Record]], rows: int
    ) -> None:
        devices = {t.device for t in tensors} or {s.param.device for s in self._states.values()}
        device = devices.pop() if len(devices) == 1 else torch.device("meta")
        self._emit(device, job, rows, sum(t.nbytes for t in tensors))

    def _grad_for_reducer(
        self, name: str, grad: torch.Tensor
    ) -> tuple[str, torch.Tensor, int | None]:
        """`grad`, shared or copied for the reducer (see `capture.sharing`)."""
        if grad.device.type != "cpu":
            return name, grad.detach(), None
        return name, *self._sharing.hand_over(name, grad, self._reducer.snapshot)

    def _private(self, tensor: torch.Tensor, *, keep: bool) -> torch.Tensor:
        """`tensor` detached, copied when training could change it before the reduction
        reads it: always on the CPU, where the reduction runs later on another thread
        (into a buffer lent by the pool); on accelerators, whose stream orders the
        reduction before any later in-place change, only when it is kept (weights kept
        for weight change)."""
        tensor = tensor.detach()
        if tensor.device.type == "cpu":
            return self._reducer.snapshot(tensor)
        return tensor.clone() if keep else tensor

    def _make_grad_hook(self, state: _State) -> Callable[[torch.Tensor], None]:
        def hook(param: torch.Tensor) -> None:
            if self.capturing:
                state.grad = param.grad  # a reference, read at `Run.step()`

        return hook


def _hold_weight(
    step: int, name: str, state: _State, weight: torch.Tensor, summary: Summary
) -> list[Record]:
    """Keep the weight record of `step` until its update ratio is known; return the
    record still waiting from an earlier step, if its update was never seen."""
    records: list[Record] = [] if state.pending is None else [_pending_record(name, state, None)]
    assert state.init is not None
    if state.init_norm is None:
        state.init_norm = torch.linalg.vector_norm(state.init.to(torch.float32))
    since_init = relative_change(weight, state.init, state.init_norm)
    last = state.ratio
    if state.prev is None:
        since_prev = torch.full_like(since_init, _NAN)
    elif last is not None and last[0] is weight and last[1] is state.prev:
        since_prev = last[2].reshape(())
    else:
        since_prev = relative_change(weight, state.prev, state.prev_norm)
    state.ratio = None
    state.prev, state.prev_norm = weight, summary.stats[_L2]
    state.pending = (step, weight, summary, torch.stack([since_prev, since_init]))
    return records


def _pending_record(name: str, state: _State, after: torch.Tensor | None) -> SummaryRecord:
    """The weight record waiting in `state`, completed with the update ratio to `after`
    (NaN when the update was not seen)."""
    assert state.pending is not None
    step, before, summary, changes = state.pending
    state.pending = None
    if after is None:
        ratio = torch.full((1,), _NAN, device=before.device)
    else:
        ratio = relative_change(after, before, summary.stats[_L2]).reshape(1)  # l2 of before
        state.ratio = (after, before, ratio)
    change = torch.cat([changes.to(torch.float32), ratio.to(torch.float32)])
    return SummaryRecord(step, name, "weight", before.numel(), summary, change)
