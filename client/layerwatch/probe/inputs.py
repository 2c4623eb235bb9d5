"""`ProbeSet`: the fixed probe inputs and labels a watch runs at each probe, checked once."""

from __future__ import annotations

import base64
from collections.abc import Iterator, Mapping
from typing import Final

import torch

from layerwatch import wire
from layerwatch.errors import ConfigError
from layerwatch.logs import logger

__all__ = ["DEFAULT_MAX_SAMPLES", "ProbeInputs", "ProbeSet", "pack_int32"]


DEFAULT_MAX_SAMPLES: Final = 1024
ProbeInputs = torch.Tensor | tuple[object, ...] | list[object] | Mapping[str, object]
"""A tensor (`model(x)`), a tuple or list (`model(*x)`) or a dict (`model(**x)`)."""


_INT32 = torch.iinfo(torch.int32)


class ProbeSet:
    """Fixed probe inputs and their labels, checked once; passed to `run_probe()`.

    Tensors in `inputs` share their first (sample) dimension; other values in a
    tuple, list or dict are passed to the model unchanged. The tensors are kept
    (not copied) on their device and moved to the model's device chunk by chunk at
    probe time. Beyond `max_samples` samples only the first ones are kept, with one
    logged warning.

    Usage:

    ```python
    probe_set = ProbeSet(x_val[:512], y_val[:512])
    payloads = run_probe(model, probe_set, select_leaves(model), step=run.current_step)
    ```

    Raises `ConfigError` for inputs without a sample dimension, sample counts that
    differ, labels that are not integers in int32 range, or a bad `max_samples`.
    """

    def __init__(
        self,
        inputs: ProbeInputs,
        labels: torch.Tensor | None = None,
        *,
        max_samples: int = DEFAULT_MAX_SAMPLES,
    ) -> None:
        if isinstance(max_samples, bool) or not isinstance(max_samples, int):
            raise ConfigError(f"`max_samples` must be an int, not {max_samples!r}")
        if not 1 <= max_samples <= wire.MAX_PROBE_SAMPLES:
            raise ConfigError(f"`max_samples` must be 1-{wire.MAX_PROBE_SAMPLES}: {max_samples}")
        if isinstance(inputs, torch.Tensor):
            self._args: tuple[object, ...] = (inputs,)
            self._kwargs: dict[str, object] = {}
        elif isinstance(inputs, (tuple, list)):
            self._args, self._kwargs = tuple(inputs), {}
        elif isinstance(inputs, Mapping) and all(isinstance(k, str) for k in inputs):
            self._args, self._kwargs = (), dict(inputs)
        else:
            raise ConfigError(
                "probe inputs must be a tensor, a tuple or list (model(*inputs)) or a dict "
                f"with str keys (model(**inputs)), not {type(inputs).__name__}"
            )
        tensors = [v for v in (*self._args, *self._kwargs.values()) if isinstance(v, torch.Tensor)]
        if not tensors:
            raise ConfigError("probe inputs hold no tensor")
        if any(t.dim() == 0 for t in tensors):
            raise ConfigError("every probe input tensor needs a sample dimension (dim 0)")
        counts = {t.shape[0] for t in tensors}
        if len(counts) > 1:
            raise ConfigError(f"probe input tensors disagree on the sample count: {sorted(counts)}")
        total = counts.pop()
        if total == 0:
            raise ConfigError("probe inputs hold no sample")
        self._labels = None if labels is None else _check_labels(labels, total)
        self.samples = min(total, max_samples)
        """Samples each probe runs: the inputs' first dimension, capped at `max_samples`."""
        if total > max_samples:
            logger.warning(
                "layerwatch: the probe keeps the first %d of its %d samples", max_samples, total
            )
            self._args = tuple(_head(v, max_samples) for v in self._args)
            self._kwargs = {k: _head(v, max_samples) for k, v in self._kwargs.items()}
            if self._labels is not None:
                self._labels = self._labels[:max_samples]
        self.packed_labels = None if self._labels is None else pack_int32(self._labels)
        """Base64 of the labels as little-endian int32, ready for `wire.Probe.labels`."""

    def single_input(self, count: int, device: torch.device | None) -> torch.Tensor | None:
        """The first `count` samples when the model takes one float tensor, else None."""
        if self._kwargs or len(self._args) != 1:
            return None
        [inputs] = self._args
        if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point():
            return None
        return inputs[:count] if device is None else inputs[:count].to(device)

    @property
    def labels(self) -> torch.Tensor | None:
        """The labels as an int32 CPU tensor of shape `(samples,)`, or None."""
        return self._labels

    def chunks(
        self, batch_size: int, device: torch.device | None
    ) -> Iterator[tuple[int, tuple[object, ...], dict[str, object]]]:
        """Yield `(rows, args, kwargs)` for each run of at most `batch_size` samples,
        tensors moved to `device` (when given) without blocking the host."""
        for start in range(0, self.samples, batch_size):
            stop = min(start + batch_size, self.samples)

            def take(value: object, start: int = start, stop: int = stop) -> object:
                if not isinstance(value, torch.Tensor):
                    return value
                value = value[start:stop]
                # Only a copy to an accelerator may skip the wait: a host tensor copied
                # without one could be read before it is written.
                blocking = device is None or device.type == "cpu"
                return value if device is None else value.to(device, non_blocking=not blocking)

            args = tuple(take(v) for v in self._args)
            yield stop - start, args, {k: take(v) for k, v in self._kwargs.items()}


def _head(value: object, n: int) -> object:
    return value[:n] if isinstance(value, torch.Tensor) else value


def _check_labels(labels: object, samples: int) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        raise ConfigError(f"probe labels must be a tensor, not {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex():
        raise ConfigError(
            f"probe labels must be integer class indices, not {labels.dtype} "
            "(pass `labels.long()` if the values are whole numbers)"
        )
    if labels.shape != (samples,):
        raise ConfigError(
            f"probe labels need shape ({samples},), one per input sample; got {tuple(labels.shape)}"
        )
    labels = labels.detach().to("cpu", torch.int64)
    if labels.min() < _INT32.min or labels.max() > _INT32.max:
        raise ConfigError("probe labels must fit in int32")
    return labels.to(torch.int32)


def pack_int32(values: torch.Tensor) -> bytes:
    """Base64 of `values` as little-endian int32, as `wire.Probe` carries labels."""
    return base64.b64encode(values.cpu().numpy().astype("<i4", copy=False).tobytes())
