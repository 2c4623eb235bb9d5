"""`SnapshotPool`: reused CPU buffers for the copies the reducer thread reads.

A CPU capture copies each tensor before handing it to the reducer thread (training
would change it meanwhile). A fresh `clone()` of a tensor above glibc's mmap
threshold maps new pages and faults every one of them in: a 1.6 MB weight took
0.54 ms to clone and 0.04 ms to `copy_` into a buffer already mapped (measured on
the benchmark machine, one torch thread). The pool keeps the buffers a capture
used and lends them to the next one, so a steady run maps its buffers once.

Ownership is explicit: `copy` lends a buffer, `hold` adds a holder, `release`
drops one; the last release puts the buffer back on the free list. Free buffers
beyond `max_free_bytes` are let go, so the pool never holds more than what is in
flight plus that much.
"""

from __future__ import annotations

import threading

import torch

__all__ = ["SnapshotPool"]

_Key = tuple[torch.dtype, int]


class SnapshotPool:
    """Lends contiguous CPU copies of tensors out of reused buffers; thread-safe."""

    def __init__(self, max_free_bytes: int) -> None:
        self._max_free_bytes = max_free_bytes
        self._free: dict[_Key, list[torch.Tensor]] = {}
        self._free_bytes = 0
        # id of a lent view -> the view, its buffer, its holders
        self._lent: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = {}
        self._lock = threading.Lock()

    @property
    def lent_bytes(self) -> int:
        """Bytes of the buffers lent out now."""
        with self._lock:
            return sum(buffer.nbytes for _, buffer, _ in self._lent.values())

    @property
    def free_bytes(self) -> int:
        return self._free_bytes

    def copy(self, tensor: torch.Tensor) -> torch.Tensor:
        """A contiguous copy of CPU `tensor` (detached), in a buffer lent until released."""
        key = (tensor.dtype, tensor.numel())
        with self._lock:
            spare = self._free.get(key)
            buffer = spare.pop() if spare else None
            if buffer is not None:
                self._free_bytes -= buffer.nbytes
        if buffer is None:
            buffer = torch.empty(key[1], dtype=key[0])
        view = buffer.view(tensor.shape)
        view.copy_(tensor.detach())
        with self._lock:
            self._lent[id(view)] = (view, buffer, 1)
        return view

    def hold(self, tensor: torch.Tensor) -> None:
        """One more holder of a lent `tensor` (a no-op for tensors not from the pool)."""
        with self._lock:
            lent = self._lent.get(id(tensor))
            if lent is not None and lent[0] is tensor:
                self._lent[id(tensor)] = (lent[0], lent[1], lent[2] + 1)

    def release(self, *tensors: torch.Tensor | None) -> None:
        """Drop one holder of each lent tensor; the last one returns its buffer. Tensors
        not from the pool (and None) are ignored."""
        with self._lock:
            for tensor in tensors:
                lent = self._lent.get(id(tensor))
                if lent is None or lent[0] is not tensor:
                    continue
                view, buffer, holders = lent
                if holders > 1:
                    self._lent[id(tensor)] = (view, buffer, holders - 1)
                    continue
                del self._lent[id(tensor)]
                if self._free_bytes + buffer.nbytes <= self._max_free_bytes:
                    self._free.setdefault((buffer.dtype, buffer.numel()), []).append(buffer)
                    self._free_bytes += buffer.nbytes
