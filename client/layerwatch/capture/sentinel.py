"""`Sentinel`: a check for NaN and infinite values on every step, captured or not.

With `every=50` a NaN born at step 37 has spread through every weight by step 50,
and the captured statistics only say that everything is NaN. The sentinel checks
each watched module's output (in forward passes run with gradients enabled) and,
at the optimizer step, each watched parameter's gradient, on every step, and
keeps on the tensors' device, per tensor ("slot"):

* `finite` (slots,) bool: this step's tensors were all finite so far; each check
  ANDs into it, so a module called twice in a step (gradient accumulation, a
  shared module) fires if either call did;
* `fired` (slots,) bool: the slot held a non-finite value at its last step;
* `first` (slots,) int64: the first step since the last read at which the slot
  went from finite to non-finite (`NEVER`: none).

A tensor is finite when its minimum and maximum are: both are NaN if any element
is, and -inf or inf if any element is. `torch.aminmax` is one reduction; on the
CPU it is more than ten times faster than `torch.isfinite(t).all()`, which makes
a bool per element first. Nothing is read back on the training thread: the
checks and the fold at the end of each step are a few small kernels queued on
the device. At each captured step
(and at `flush()` and `remove()`) `first` is handed over as a `NonfiniteRecord`
and starts again; the spooler thread reads it back with the batch's one copy
and turns it into a `wire.NonfiniteEvent` (see `layerwatch.delivery.batching`).
A tensor staying non-finite is reported once, when it turns; again only after a
finite step.

Slots: activations in the order their modules first ran, then gradients in
parameter order: the order in which `NonfiniteEvent.tensor` and `also` are chosen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from layerwatch.records import NEVER, NonfiniteRecord, SlotName

__all__ = ["Sentinel"]


@dataclass
class _DeviceState:
    finite: torch.Tensor  # (slots,) bool
    fired: torch.Tensor  # (slots,) bool
    first: torch.Tensor  # (slots,) int64
    touched: bool = False  # checked in the current step


class Sentinel:
    """The non-finite checks of one `Watch`; its methods are called on the training
    thread and never wait for the device."""

    def __init__(self, activations: int, params: Sequence[tuple[str, torch.nn.Parameter]]) -> None:
        self._activations = activations  # slots reserved for module outputs
        self._params = list(params)
        self._slots: dict[str, int] = {}  # module name -> slot, in the order first run
        self._names: list[SlotName | None] = [None] * activations
        self._names += [(name, "grad") for name, _ in self._params]
        self._states: dict[torch.device, _DeviceState] = {}

    def check_activation(self, module_name: str, tensor: torch.Tensor) -> None:
        """Called by a forward hook with a module's floating-point output."""
        slot = self._slots.get(module_name)
        if slot is None:
            slot = len(self._slots)
            if slot >= self._activations:  # a module not chosen: never expected
                return
            self._slots[module_name] = slot
            self._names[slot] = (module_name, "activation")
        if tensor.numel() == 0:  # host metadata: no read back
            return
        state = self._state(tensor.device)
        state.touched = True
        low, high = torch.aminmax(tensor.detach())
        state.finite[slot : slot + 1].logical_and_(torch.isfinite(low) & torch.isfinite(high))

    def check_grads(self) -> None:
        """Called at the optimizer step (or `Run.step()`): the parameters' gradients."""
        # Per device: the gradients' slots, and their minima and maxima.
        by_device: dict[torch.device, tuple[list[int], list[torch.Tensor], list[torch.Tensor]]] = {}
        for index, (_, param) in enumerate(self._params):
            grad = param.grad
            if grad is not None and grad.is_floating_point() and grad.numel():
                slots, lows, highs = by_device.setdefault(grad.device, ([], [], []))
                slots.append(self._activations + index)
                low, high = torch.aminmax(grad.detach())
                lows.append(low)
                highs.append(high)
        for device, (slots, lows, highs) in by_device.items():
            state = self._state(device)
            state.touched = True
            # (len(slots),) bool; float32 holds every float16 and bfloat16 value and inf
            stacked = torch.stack([v.float() for v in lows]).isfinite()
            stacked &= torch.stack([v.float() for v in highs]).isfinite()
            start, stop = slots[0], slots[-1] + 1
            if stop - start == len(slots):  # contiguous, the usual case: one kernel
                state.finite[start:stop].logical_and_(stacked)
            else:
                for i, slot in enumerate(slots):
                    state.finite[slot : slot + 1].logical_and_(stacked[i])

    def end_step(self, step: int) -> None:
        """Called when step `step` ends: fold its checks into `fired` and `first`."""
        for state in self._states.values():
            if not state.touched:
                continue
            state.touched = False
            bad = state.finite.logical_not()  # (slots,)
            turned = bad & ~state.fired & (state.first == NEVER)
            state.first.masked_fill_(turned, step)  # a Python int: no read back
            state.fired.copy_(bad)
            state.finite.fill_(True)

    def read(self, prefix: str) -> NonfiniteRecord | None:
        """Hand over what was seen since the last read, and start again."""
        if not self._states:
            return None
        firsts = []
        for state in self._states.values():
            firsts.append(state.first.clone())  # ordered before the fill on its stream
            state.first.fill_(NEVER)
        names = tuple(None if n is None else (prefix + n[0], n[1]) for n in self._names)
        return NonfiniteRecord(names, tuple(firsts))

    def _state(self, device: torch.device) -> _DeviceState:
        state = self._states.get(device)
        if state is None:
            slots = len(self._names)
            state = _DeviceState(
                finite=torch.ones(slots, dtype=torch.bool, device=device),
                fired=torch.zeros(slots, dtype=torch.bool, device=device),
                first=torch.full((slots,), NEVER, dtype=torch.int64, device=device),
            )
            self._states[device] = state
        return state
