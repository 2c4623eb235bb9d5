"""What a probe keeps of one layer: the temporary hook that collects its outputs chunk
by chunk (`make_hook`), their reduction to per-sample features, and the packing
into a `wire.ProbeLayer` (`pack_layer`); see `layerwatch.probe.capture` for the rules."""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.functional import adaptive_avg_pool2d
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from layerwatch import wire
from layerwatch.reduce.statistics import first_float_tensor

__all__ = ["Caps", "ForwardHook", "LayerOutputs", "make_hook", "pack_layer"]

ForwardHook = Callable[[nn.Module, tuple[object, ...], object], None]


@dataclass
class LayerOutputs:
    """What the temporary hook of one module collects over the chunks of a probe."""

    name: str
    features: list[torch.Tensor] = field(default_factory=list)  # (rows, ...) float16 each
    maps: list[torch.Tensor] = field(default_factory=list)  # (m, c, h, w) float16 each
    source_shape: tuple[int, ...] | None = None
    reduced: wire.Reduction = "none"
    rows: int = 0  # samples collected so far
    seen: bool = False  # in this chunk: a module called twice keeps its first call
    skipped: str | None = None


@dataclass
class Caps:
    """The probe's caps on what a layer keeps, and the chunk running now."""

    features: int
    maps: int
    map_size: int
    max_channels: int
    start: int = 0  # first sample of the chunk running now
    rows: int = 0  # its sample count


def make_hook(layer: LayerOutputs, options: Caps) -> ForwardHook:
    def hook(module: nn.Module, args: tuple[object, ...], output: object) -> None:
        if layer.seen or layer.skipped:
            return
        layer.seen = True
        try:
            _collect(layer, output, options)
        except Exception as exc:  # one odd layer never costs the probe of the others
            layer.skipped = f"its output could not be reduced: {type(exc).__name__}: {exc}"
            layer.features.clear()
            layer.maps.clear()

    return hook


def _collect(layer: LayerOutputs, output: object, options: Caps) -> None:
    packed = _packed_sequence(output)
    parts: list[torch.Tensor] | None
    if packed is not None:
        padded, lengths = pad_packed_sequence(packed, batch_first=True)  # (N, T, F), (N,)
        tensor: torch.Tensor | None = padded
        parts = [padded[i, :length] for i, length in enumerate(lengths.tolist())]
    else:
        tensor = first_float_tensor(output, nested=True)
        parts = list(tensor.unbind()) if tensor is not None and tensor.is_nested else None
    if tensor is None:
        layer.skipped = "no floating-point output"
        return
    if parts is not None:
        _collect_ragged(layer, parts, options)
        return
    if tensor.dim() == 0 or tensor.shape[0] != options.rows:
        layer.skipped = f"output {tuple(tensor.shape)} is not batch-first"
    elif layer.source_shape not in (None, tuple(tensor.shape[1:])):
        layer.skipped = "output shape changes between chunks"
    elif layer.rows != options.start:
        layer.skipped = "not called on every chunk"
    elif any(size == 0 for size in tensor.shape[1:]):
        layer.skipped = "empty output"
    else:
        layer.source_shape = tuple(tensor.shape[1:])
        x = tensor.detach().float()  # reductions in float32, float16 only at the end
        feats, layer.reduced = _reduce_features(x, options.features)
        layer.features.append(feats.to(torch.float16))
        layer.rows += options.rows
        taken = sum(m.shape[0] for m in layer.maps)
        if x.dim() == 4 and taken < options.maps:
            layer.maps.append(_feature_maps(x[: options.maps - taken], options))


def _collect_ragged(layer: LayerOutputs, parts: list[torch.Tensor], options: Caps) -> None:
    """Each sample's mean over its own steps, `(T_i, ..., F)` -> `(F,)`: padding never
    enters the features."""
    width = {part.shape[-1] if part.dim() else 0 for part in parts}
    if len(parts) != options.rows:
        layer.skipped = f"ragged output of {len(parts)} samples, not {options.rows}"
    elif len(width) != 1 or any(part.dim() < 2 for part in parts):
        layer.skipped = "ragged output without a fixed feature size"
    elif layer.rows != options.start:
        layer.skipped = "not called on every chunk"
    elif layer.source_shape is not None and layer.source_shape[-1] != parts[0].shape[-1]:
        layer.skipped = "output shape changes between chunks"
    elif any(part.numel() == 0 for part in parts):
        layer.skipped = "empty output"
    else:
        longest = [max(part.shape[d] for part in parts) for d in range(parts[0].dim())]
        if layer.source_shape is not None:
            longest = [max(a, b) for a, b in zip(longest, layer.source_shape, strict=True)]
        layer.source_shape = tuple(longest)
        means = torch.stack(
            [part.detach().float().reshape(-1, part.shape[-1]).mean(0) for part in parts]
        )  # (rows, F)
        feats, _ = _reduce_features(means, options.features)
        layer.reduced = "averaged"
        layer.features.append(feats.to(torch.float16))
        layer.rows += options.rows


def _packed_sequence(output: object) -> PackedSequence | None:
    """The `PackedSequence` an RNN returns (alone or first in its output tuple), if any."""
    if isinstance(output, PackedSequence):
        return output
    if isinstance(output, tuple) and output and isinstance(output[0], PackedSequence):
        return output[0]
    return None


def _reduce_features(x: torch.Tensor, budget: int) -> tuple[torch.Tensor, wire.Reduction]:
    if x.dim() == 1:
        return x.unsqueeze(1), "none"  # (N, 1)
    if x.dim() == 4:  # (N, C, H, W)
        _, c, h, w = x.shape
        if c * h * w <= budget:
            return x, "none"
        side = math.isqrt(budget // c) if c <= budget else 1
        x = x[:, :budget]  # (N, min(C, budget), H, W)
        if h <= side and w <= side:
            return x, "truncated"
        return adaptive_avg_pool2d(x, (min(h, side), min(w, side))), "pooled"  # (N, C', h, w)
    reduced: wire.Reduction = "none"
    if x.dim() > 2:
        x = x.flatten(1, -2).mean(1)  # (N, T..., F) -> (N, F)
        reduced = "averaged"
    if x.shape[1] > budget:
        return x[:, :budget], "truncated" if reduced == "none" else reduced
    return x, reduced


def _feature_maps(x: torch.Tensor, options: Caps) -> torch.Tensor:
    x = x[:, : options.max_channels]  # (m, c, H, W)
    h, w = x.shape[2:]
    if h > options.map_size or w > options.map_size:
        x = adaptive_avg_pool2d(x, (min(h, options.map_size), min(w, options.map_size)))
    return x.to(torch.float16)


def pack_layer(layer: LayerOutputs, samples: int) -> wire.ProbeLayer | None:
    """`_to_wire`, or None with the layer marked skipped when its values can't be packed."""
    try:
        return _to_wire(layer, samples)
    except Exception as exc:
        layer.skipped = f"its output could not be packed: {type(exc).__name__}: {exc}"
        return None


def _to_wire(layer: LayerOutputs, samples: int) -> wire.ProbeLayer | None:
    if layer.skipped is None and layer.rows != samples:
        layer.skipped = "not called on every chunk" if layer.rows else "not called"
    if layer.skipped is not None:
        return None
    feats = torch.cat(layer.features)  # (samples, ...) float16, on the model's device
    maps = torch.cat(layer.maps) if layer.maps else None  # (m, c, h, w)
    flat = feats.reshape(-1) if maps is None else torch.cat([feats.reshape(-1), maps.reshape(-1)])
    host = flat.cpu().numpy().astype("<f2", copy=False)  # the one host copy of the layer
    split = feats.numel()
    return wire.ProbeLayer(
        name=layer.name,
        features_shape=list(feats.shape),
        features=base64.b64encode(host[:split].tobytes()),
        source_shape=list(layer.source_shape or ()),
        reduced=layer.reduced,
        maps_shape=None if maps is None else list(maps.shape),
        maps=None if maps is None else base64.b64encode(host[split:].tobytes()),
    )
