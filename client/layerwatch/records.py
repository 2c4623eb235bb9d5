"""Records: what capture hands to delivery, one measurement of one tensor (or a scalar,
or a model tree) still in the training process, its tensors possibly on a device.

The sender turns records into `wire` payloads (see `layerwatch.delivery.batching`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, NamedTuple

from layerwatch import wire

if TYPE_CHECKING:
    import torch

    from layerwatch.reduce.statistics import Summary

__all__ = [
    "NEVER",
    "ModelRecord",
    "NonfiniteRecord",
    "Record",
    "ScalarRecord",
    "SlotName",
    "SummaryRecord",
    "TensorKey",
    "TensorMeta",
]

TensorMeta = tuple[str, tuple[int, ...], str]
"""What hooks note about a tensor at its first capture: module type, shape, dtype."""

TensorKey = tuple[str, wire.Kind]


class SummaryRecord(NamedTuple):
    """One capture of one tensor, still on the device that computed it."""

    step: int
    name: str
    kind: wire.Kind
    numel: int  # exact; the float32 copy in the statistics rounds above 2**24
    summary: Summary
    change: torch.Tensor | None = None  # (3,) float32: since_prev, since_init, update_ratio

    @property
    def rows(self) -> int:
        """Rows this record becomes on the wire: statistics, histogram, unit means, change."""
        s = self.summary
        return 1 + (s.counts is not None) + (s.units is not None) + (self.change is not None)


class ModelRecord(NamedTuple):
    """The module tree of a watched model, made at its first forward pass."""

    tree: wire.ModelTree
    rows: int = 1


class ScalarRecord(NamedTuple):
    """One user-logged value; a tensor value is read back on the sender thread."""

    step: int
    name: str
    value: float | torch.Tensor
    time: float
    rows: int = 1


NEVER = 2**62
"""A sentinel's first step of a slot that did not turn non-finite; exact as a float64,
like every step below 2**53."""

SlotName = tuple[str, Literal["activation", "grad", "weight"]]
"""A tensor the sentinel checks: its name and kind."""


class NonfiniteRecord(NamedTuple):
    """What the sentinel (`capture.sentinel`) saw between two reads: per slot, the first
    step at which it turned non-finite (`NEVER`: it did not), on each device it ran on."""

    names: tuple[SlotName | None, ...]  # per slot; None: a module that never ran
    first: tuple[torch.Tensor, ...]  # per device: (slots,) int64
    rows: int = 0  # it holds at most one event, counted when decoded


Record = SummaryRecord | ScalarRecord | ModelRecord | NonfiniteRecord
