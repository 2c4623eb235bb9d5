"""`ShareGate`: when the reducer thread may read a CPU tensor in place, without a copy.

A CPU capture hands tensors to the reducer thread, which reads them while training
goes on; a copy keeps the values from changing under it. Most tensors never
change once captured: `optimizer.zero_grad()` (with its default `set_to_none=True`)
drops each gradient for a new one, and most module outputs are only read by the
layers after them. For those the copy is waste: on a small MLP the copies took a
tenth of the training thread's time.

The gate learns it per source (a parameter's gradient, a module's output). The
first capture of a source is copied and its tensor watched. At the next step the
gate judges: the tensor is safe to share if PyTorch's version counter, which every
in-place operation bumps, has not moved, and, for gradients, if the parameter
holds another gradient by then (zeroing in place, even through `tensor.data`,
which the counter does not see, keeps the same one). Later captures of a safe
source share the tensor itself. After reading a shared tensor the reducer checks
the counter again: if it moved (the training loop changed), the record is dropped
and counted, and the source is copied from then on.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["ShareGate"]


class ShareGate:
    """Which sources' tensors the reducer may read in place; one per watch.

    Called on the training thread, except `torn`, which the reducer thread calls;
    each call is a few set operations, atomic under the GIL.
    """

    def __init__(self) -> None:
        self._safe: set[str] = set()
        self._unsafe: set[str] = set()  # seen changed in place: copied for good
        # Held until judged (a tensor that died could not tell its version): one
        # capture's worth of each source, once.
        self._watched: dict[str, tuple[torch.Tensor, int]] = {}

    def shares(self, source: str) -> bool:
        """Whether `source`'s tensors may be read in place."""
        return source in self._safe

    def watch(self, source: str, tensor: torch.Tensor) -> None:
        """Note `tensor`, captured from `source`, for the next `judge`."""
        if source not in self._unsafe and source not in self._safe:
            self._watched[source] = (tensor, tensor._version)

    def judge(self, current: Callable[[str], torch.Tensor | None] | None = None) -> None:
        """Decide about the tensors watched since the last call. `current(source)` is
        the tensor the source holds now (a parameter's gradient): if it is still the
        one watched, it may be changed in place later, and is not shared."""
        if not self._watched:
            return
        for source, (tensor, version) in self._watched.items():
            held = current is not None and current(source) is tensor
            if tensor._version != version or held:
                self._unsafe.add(source)
            else:
                self._safe.add(source)
        self._watched.clear()

    def hand_over(
        self, source: str, tensor: torch.Tensor, copy: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, int | None]:
        """What the reducer reads of CPU `tensor`: the tensor itself and its version when
        `source` is shared, else `copy(tensor)` (and the tensor is watched) and None."""
        if source in self._safe:
            shared = tensor.detach()  # shares the version counter
            return shared, shared._version
        self.watch(source, tensor)
        return copy(tensor.detach()), None

    def intact(self, source: str, tensor: torch.Tensor, version: int | None) -> bool:
        """Called by the reducer after reading what `hand_over` gave: False when a shared
        tensor changed meanwhile; `source` is then copied from now on."""
        if version is None or tensor._version == version:
            return True
        self._safe.discard(source)
        self._unsafe.add(source)
        return False
