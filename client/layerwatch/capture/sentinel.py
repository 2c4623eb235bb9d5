"""`Sentinel`: a check for NaN and infinite values on every step, captured or not.

With `every=50` a NaN born at step 37 has spread through every weight by step 50,
and the captured statistics only say that everything is NaN. The sentinel checks
each watched module's output (in forward passes run with gradients enabled) and,
at the optimizer step, each watched parameter's gradient, on every step, and
keeps on the tensors' device, per tensor ("slot"):

* `finite` (slots,) bool: this step's tensors were all finite so far; the
  checks (each tensor's minimum and maximum, kept as 0-d tensors) are ANDed into
  it at the step's end, a few kernels for the whole step, so a module called
  twice in a step (gradient accumulation, a shared module) fires if either
  call did;
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
from dataclasses import dataclass, field

import torch

from layerwatch.records import NEVER, NonfiniteRecord, SlotName
from layerwatch.reduce.statistics import first_float_tensor

__all__ = ["Sentinel"]


@dataclass
class _DeviceState:
    finite: torch.Tensor  # (slots,) bool
    fired: torch.Tensor  # (slots,) bool
    first: torch.Tensor  # (slots,) int64
    touched: bool = False  # checked in the current step
    # Checks not folded into `finite` yet: slot, minimum and maximum (0-d, on the device)
    slots: list[int] = field(default_factory=list)
    lows: list[torch.Tensor] = field(default_factory=list)
    highs: list[torch.Tensor] = field(default_factory=list)


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
        # Checks kept before folding: a loop that never ends a step must not grow them.
        self._max_pending = 4 * len(self._names) + 16

    def check_output(self, module_name: str, output: object) -> None:
        """Called by a forward hook (in passes with gradients) with a module's output."""
        tensor = first_float_tensor(output)  # as captures summarise it
        if tensor is not None:
            self.check_activation(module_name, tensor)

    def check_activation(self, module_name: str, tensor: torch.Tensor) -> None:
        """A module's floating-point output."""
        slot = self._slots.get(module_name)
        if slot is None:
            slot = len(self._slots)
            if slot >= self._activations:  # a module not chosen: never expected
                return
            self._slots[module_name] = slot
            self._names[slot] = (module_name, "activation")
        if tensor.numel():  # host metadata: no read back
            self._check(slot, tensor)

    def check_grads(self) -> None:
        """Called at the optimizer step (or `Run.step()`): the parameters' gradients."""
        for index, (_, param) in enumerate(self._params):
            grad = param.grad
            if grad is not None and grad.is_floating_point() and grad.numel():
                self._check(self._activations + index, grad)

    def end_step(self, step: int) -> None:
        """Called when step `step` ends: fold its checks into `fired` and `first`."""
        for state in self._states.values():
            if not state.touched:
                continue
            self._fold(state)
            state.touched = False
            bad = state.finite.logical_not()  # (slots,)
            turned = bad & ~state.fired & (state.first == NEVER)
            state.first.masked_fill_(turned, step)  # a Python int: no read back
            state.fired.copy_(bad)
            state.finite.fill_(True)

    def _check(self, slot: int, tensor: torch.Tensor) -> None:
        state = self._state(tensor.device)
        state.touched = True
        low, high = torch.aminmax(tensor.detach())  # one reduction; kernels only
        state.slots.append(slot)
        state.lows.append(low)
        state.highs.append(high)
        if len(state.slots) > self._max_pending:
            self._fold(state)

    @staticmethod
    def _fold(state: _DeviceState) -> None:
        """AND the pending checks into `finite`: a few kernels for the whole step."""
        if not state.slots:
            return
        # float32 holds every float16 and bfloat16 value, and the infinities
        lows = torch.stack([low.float() for low in state.lows])  # (checks,)
        highs = torch.stack([high.float() for high in state.highs])
        finite = lows.isfinite()
        finite &= highs.isfinite()
        # Runs of consecutive slots, each one slice: in a usual step two (the outputs
        # in the order their modules ran, then the gradients). A slot checked twice in
        # the step (a module called twice) starts a new run, and is ANDed again.
        slots, start = state.slots, 0
        for i in range(1, len(slots) + 1):
            if i == len(slots) or slots[i] != slots[i - 1] + 1:
                first = slots[start]
                state.finite[first : first + i - start].logical_and_(finite[start:i])
                start = i
        state.slots, state.lows, state.highs = [], [], []

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
