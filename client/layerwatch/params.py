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
weights when the model was watched and those of the previous capture.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from layerwatch.buffer import Record, SummaryRecord
from layerwatch.reduce import Summarizer, Summary, relative_change

if TYPE_CHECKING:
    from torch.utils.hooks import RemovableHandle

__all__ = ["Emit", "ParamTracker"]

Emit = Callable[[torch.Tensor, Callable[[bool], Iterable[Record]], int], None]
"""Run a job on the tensors' device: `emit(tensor, job, rows)` calls `job(sync)` inline
or on the reducer thread; `tensor` tells the device and the bytes held."""

_NAN = math.nan


@dataclass
class _State:
    param: torch.nn.Parameter
    init: torch.Tensor | None  # weights when watched (weight change only)
    prev: torch.Tensor | None = None  # weights at the previous capture
    pending: tuple[int, torch.Tensor, Summary, torch.Tensor] | None = None
    grad: torch.Tensor | None = None  # without an optimizer: this step's gradient


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
    ) -> None:
        self._summarizer = summarizer
        self._emit = emit
        self._weights = weights
        self._gradients = gradients
        self._change = weights and weight_change
        self._states: dict[str, _State] = {}
        self._handles: list[RemovableHandle] = []
        self.capturing = False
        self._awaiting_update = False  # weights captured before this step's update
        with torch.no_grad():
            for name, param in params:
                init = param.detach().clone() if self._change else None
                self._states[name] = _State(param, init)
        if gradients and follow_grads:
            for state in self._states.values():
                if state.param.requires_grad:
                    hook = self._make_grad_hook(state)
                    register = state.param.register_post_accumulate_grad_hook
                    self._handles.append(register(hook))  # type: ignore[no-untyped-call]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._states)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.capturing = False

    def before_step(self, step: int) -> None:
        """At a captured step, before the update: weights and the step's gradients."""
        with torch.no_grad():
            for name, state in self._states.items():
                if self._gradients:
                    grad = state.param.grad if state.grad is None else state.grad
                    state.grad = None
                    if grad is not None:
                        self._capture_grad(step, name, grad)
                if self._weights:
                    self._capture_weight(step, name, state)
        self._awaiting_update = self._change

    def after_step(self, *, updated: bool = True) -> None:
        """After the update of a captured step: its update-to-weight ratio. With
        `updated=False` (the update was not seen) the ratio is sent as NaN."""
        if not self._awaiting_update:
            return
        self._awaiting_update = False
        with torch.no_grad():
            for name, state in self._states.items():
                self._finish_weight(name, state, state.param if updated else None)

    # -- per parameter ---------------------------------------------------------------

    def _capture_grad(self, step: int, name: str, grad: torch.Tensor) -> None:
        numel, summarizer = grad.numel(), self._summarizer
        snapshot = _private(grad, keep=False)

        def job(sync: bool) -> Iterable[Record]:
            summary = summarizer.summarize(snapshot, units=None, sync=sync)
            return [SummaryRecord(step, name, "grad", numel, summary)]

        self._emit(snapshot, job, 1 + (summarizer.bins is not None))

    def _capture_weight(self, step: int, name: str, state: _State) -> None:
        summarizer, change = self._summarizer, self._change
        snapshot = _private(state.param, keep=change)

        def job(sync: bool) -> Iterable[Record]:
            summary = summarizer.summarize(snapshot, units=None, sync=sync)
            if not change:
                return [SummaryRecord(step, name, "weight", snapshot.numel(), summary)]
            records = [] if state.pending is None else [_pending_record(name, state, None)]
            assert state.init is not None
            since_init = relative_change(snapshot, state.init)
            if state.prev is None:
                since_prev = torch.full_like(since_init, _NAN)
            else:
                since_prev = relative_change(snapshot, state.prev)
            state.prev = snapshot
            state.pending = (step, snapshot, summary, torch.stack([since_prev, since_init]))
            return records  # sent with the update ratio, after the step

        self._emit(snapshot, job, 1 + change + (summarizer.bins is not None))

    def _finish_weight(self, name: str, state: _State, after: torch.Tensor | None) -> None:
        """Send the pending weight record with the ratio of the update that led to `after`."""
        snapshot = None if after is None else _private(after, keep=True)

        def job(sync: bool) -> Iterable[Record]:
            return [] if state.pending is None else [_pending_record(name, state, snapshot)]

        self._emit(state.param.new_empty(0) if snapshot is None else snapshot, job, 0)

    def _make_grad_hook(self, state: _State) -> Callable[[torch.Tensor], None]:
        def hook(param: torch.Tensor) -> None:
            if self.capturing:
                state.grad = param.grad  # a reference, read at `Run.step()`

        return hook


def _pending_record(name: str, state: _State, after: torch.Tensor | None) -> SummaryRecord:
    """The weight record waiting in `state`, completed with the update ratio to `after`
    (NaN when the update was not seen)."""
    assert state.pending is not None
    step, before, summary, changes = state.pending
    state.pending = None
    if after is None:
        ratio = torch.full((1,), _NAN, device=before.device)
    else:
        ratio = relative_change(after, before).reshape(1)
    change = torch.cat([changes.to(torch.float32), ratio.to(torch.float32)])
    return SummaryRecord(step, name, "weight", before.numel(), summary, change)


def _private(tensor: torch.Tensor, *, keep: bool) -> torch.Tensor:
    """`tensor` detached, copied when training could change it before the reduction
    reads it: always on the CPU, where the reduction runs later on another thread;
    on accelerators, whose stream orders the reduction before any later in-place
    change, only when it is kept (weights kept for weight change)."""
    tensor = tensor.detach()
    return tensor.clone() if keep or tensor.device.type == "cpu" else tensor
