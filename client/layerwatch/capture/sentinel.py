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
is, and -inf or inf if any element is. `torch.aminmax` is one reduction, far
cheaper than `torch.isfinite(t).all()`, which makes a bool per element first.
Nothing is read back on the training thread: the checks and the fold at the end
of each step are a few small kernels queued on the device.

CPU tensors take a host path instead: there is no device to wait for, so a value
read back costs only the read, while each small kernel costs a dispatch. A CPU
tensor is finite when its sum is (one pass, the cheapest reduction; a sum that
overflows is confirmed element by element), and the bookkeeping is a few Python
sets. Even one sum per output is a pass over every activation of the step
(about 4 % of a small MLP's step), so module outputs are not summed one by one:
each is kept (a reference; autograd holds most of them anyway) until the watched
model's own forward pass returns, and only the model's output is summed. A NaN
or inf inside the network reaches that output in all but rare cases, and when
it does, the kept outputs are summed in forward order to name the first one;
they are let go either way. Outputs of modules called outside the model's
forward pass are summed one by one, at once. What this misses is a
non-finite value that the network itself removes before its output (a mask
filled with -inf ahead of a softmax, `nan_to_num`), which is rarely an
incident. Gradients are not summed on every step there: that pass over every
gradient cost 1.5 % of a small MLP's step on the training thread, more than all
the module outputs together. A non-finite gradient reaches the weights at the
update and the next step's outputs from there; when an output turns non-finite,
the host path looks at the weights once, and weights found non-finite are
reported as turned at the previous step's update (`kind="weight"`), ahead of the
outputs they poisoned. A gradient that never reaches the weights (an update that
mixed precision's loss scaler skips, say) is, rightly, not an incident there.
In a step whose outputs went unchecked (inside a `torch.compile` graph, or with
`activations=False`) the CPU gradients are checked after all.
At each captured step
(and at `flush()` and `remove()`) `first` is handed over as a `NonfiniteRecord`
and starts again; the spooler thread reads it back with the batch's one copy
and turns it into a `wire.NonfiniteEvent` (see `layerwatch.delivery.batching`).
A tensor staying non-finite is reported once, when it turns; again only after a
finite step.

Slots: activations in the order their modules first ran, then gradients, then
weights, in parameter order: the order in which `NonfiniteEvent.tensor` and
`also` are chosen.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from layerwatch.records import NEVER, NonfiniteRecord, SlotName
from layerwatch.reduce.statistics import first_float_tensor

__all__ = ["Sentinel"]

HOST_DEVICES = frozenset({"cpu"})
"""Device types checked on the host path (the tests empty it to run the device path on
the CPU)."""


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


@dataclass
class _HostState:
    """`_DeviceState` for CPU tensors, kept in Python."""

    bad: set[int] = field(default_factory=set)  # slots non-finite in the current step
    fired: set[int] = field(default_factory=set)  # slots non-finite at their last step
    first: dict[int, int] = field(default_factory=dict)  # slot -> step it turned
    weighed: bool = False  # the weights were looked at in the current step
    weights: set[int] = field(default_factory=set)  # weight slots non-finite when last looked
    turned: set[int] = field(default_factory=set)  # of those, the ones new this step
    outputs: bool = False  # a module output was checked in the current step


class Sentinel:
    """The non-finite checks of one `Watch`; its methods are called on the training
    thread and never wait for the device."""

    def __init__(
        self,
        activations: int,
        params: Sequence[tuple[str, torch.nn.Parameter]],
        *,
        grads: bool = True,
    ) -> None:
        """`activations` slots for module outputs; `params` have their gradients checked
        (on accelerators, when `grads`) and their weights looked at (on the CPU)."""
        self._activations = activations  # slots reserved for module outputs
        self._params = list(params)
        self._grads = grads
        self._slots: dict[str, int] = {}  # module name -> slot, in the order first run
        self._names: list[SlotName | None] = [None] * activations
        self._names += [(name, "grad") for name, _ in self._params]
        self._names += [(name, "weight") for name, _ in self._params]
        self._states: dict[torch.device, _DeviceState] = {}
        self._host: _HostState | None = None  # CPU tensors
        # Checks kept before folding: a loop that never ends a step must not grow them.
        self._max_pending = 4 * len(self._names) + 16
        # CPU module outputs not summed yet (slot, tensor), in forward order, and where
        # each forward pass of the watched model in progress began in that list.
        self._pending: list[tuple[int, torch.Tensor]] = []
        self._marks: list[int] = []

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
        if not tensor.numel():  # host metadata: no read back
            return
        if tensor.device.type not in HOST_DEVICES:
            self._check(slot, tensor)
            return
        self._host_state().outputs = True
        if not self._marks:  # called outside the model's forward pass: sum it now
            self._check(slot, tensor)
            return
        # Summed (detached then) only if the model's output is not finite
        self._pending.append((slot, tensor))
        if len(self._pending) > self._max_pending:  # a pass calling modules many times
            self._check_pending(0)

    def enter_model(self) -> None:
        """Called when the watched model's forward pass starts."""
        self._marks.append(len(self._pending))

    def exit_model(self, output: object) -> None:
        """Called when the watched model's forward pass returns `output`: on the CPU, one
        sum of it stands for the module outputs kept since that pass began."""
        start = self._marks.pop() if self._marks else 0
        if start >= len(self._pending):
            return
        tensor = first_float_tensor(output)
        if (
            tensor is not None and tensor.device.type in HOST_DEVICES
            and tensor.numel() and _finite_on_host(tensor)
        ):  # fmt: skip
            del self._pending[start:]
        else:
            self._check_pending(start)

    def _check_pending(self, start: int) -> None:
        """Sum the kept outputs from `start` on, in forward order, and let them go."""
        for slot, tensor in self._pending[start:]:
            self._check(slot, tensor)
        del self._pending[start:]

    def check_grads(self) -> None:
        """Called at the optimizer step (or `Run.step()`): the parameters' gradients, on
        accelerators (see the module's docstring for the CPU)."""
        if not self._grads:
            return
        skip_host = self._host is not None and self._host.outputs
        for index, (_, param) in enumerate(self._params):
            grad = param.grad
            if grad is None or (skip_host and grad.device.type in HOST_DEVICES):
                continue
            if grad.is_floating_point() and grad.numel():
                self._check(self._activations + index, grad)

    def end_step(self, step: int) -> None:
        """Called when step `step` ends: fold its checks into `fired` and `first`."""
        if self._pending:  # a forward pass that raised before it returned
            self._check_pending(0)
        self._marks.clear()
        host = self._host
        if host is not None:
            host.outputs = False
        if host is not None and (host.bad or host.fired):
            for slot in host.bad - host.fired:
                host.first.setdefault(slot, step)
            for slot in host.turned:  # at the update that ended the step before
                host.first.setdefault(slot, max(step - 1, 0))
            host.fired, host.bad = host.bad, set()
            host.turned, host.weighed = set(), False
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
        if tensor.device.type in HOST_DEVICES:
            host = self._host_state()
            if not _finite_on_host(tensor):
                if slot not in host.fired and not host.weighed:
                    self._weigh(host)
                host.bad.add(slot)
            return
        state = self._state(tensor.device)
        state.touched = True
        low, high = torch.aminmax(tensor.detach())  # one reduction; kernels only
        state.slots.append(slot)
        state.lows.append(low)
        state.highs.append(high)
        if len(state.slots) > self._max_pending:
            self._fold(state)

    def _host_state(self) -> _HostState:
        host = self._host
        if host is None:
            host = self._host = _HostState()  # the run has CPU tensors: `read` reports them
        return host

    def _weigh(self, host: _HostState) -> None:
        """An output turned non-finite: which CPU weights are (once per step)."""
        host.weighed = True
        first = self._activations + len(self._params)
        bad = {
            first + index
            for index, (_, param) in enumerate(self._params)
            if param.device.type in HOST_DEVICES and param.is_floating_point()
            and param.numel() and not _finite_on_host(param)
        }  # fmt: skip
        host.turned = bad - host.weights
        host.weights = bad

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

    def report(self, prefix: str, put: Callable[[NonfiniteRecord], object]) -> None:
        """`put` what `read` hands over, if anything."""
        record = self.read(prefix)
        if record is not None:
            put(record)

    def read(self, prefix: str) -> NonfiniteRecord | None:
        """Hand over what was seen since the last read, and start again."""
        if not self._states and self._host is None:
            return None
        firsts = []
        if self._host is not None:
            first = torch.full((len(self._names),), NEVER, dtype=torch.int64)
            for slot, step in self._host.first.items():
                first[slot] = step
            self._host.first = {}
            firsts.append(first)
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


def _finite_on_host(tensor: torch.Tensor) -> bool:
    """Whether CPU `tensor` holds only finite values: its sum is finite (NaN and inf
    make it so), or, when the sum overflowed, every element is."""
    values = tensor.detach()  # no autograd record
    return math.isfinite(values.sum().item()) or bool(torch.isfinite(values).all().item())
