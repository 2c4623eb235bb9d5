"""The probe: a model's layer outputs on fixed inputs, packed as `wire.Probe` payloads.

Statistics say how a layer's outputs are distributed; a probe says what each layer
makes of each sample of a fixed set: what label-coloured scatter plots, per-class
means, PCA / t-SNE, feature-map grids and confusion matrices need. `ProbeSet` holds
the inputs and labels; `run_probe()` runs them through the model into payloads.

What is kept, per probed layer (all caps are keyword arguments of `run_probe()`):

* samples: at most `max_samples` (default 1024) of `ProbeSet`; the first ones.
* `(N,)` outputs become `(N, 1)`.
* `(N, F)`: kept when `F <= features` (default 1024), else the first `features`
  features (`reduced="truncated"`).
* `(N, C, H, W)`: kept when `C*H*W <= features`, else average-pooled spatially
  (`adaptive_avg_pool2d`, never upsampled) to at most `s x s`, the largest `s`
  with `C*s*s <= features`; with `C > features`, the first `features` channels
  pooled to 1x1 (`reduced="pooled"`). `features_shape` stays `(N, C, h, w)`.
  The first `maps` (16) samples also give `maps`: their first `max_channels` (64)
  channels at full resolution, or average-pooled to at most `map_size x map_size`
  (32) when larger; shape `(m, c, h, w)`.
* `(N, T, F)` and other ranks: the mean over the middle dimensions, `(N, F)`
  (`reduced="averaged"`), then truncated to `features` like a 2-D output.
* ragged outputs: a `PackedSequence` (an RNN, LSTM or GRU given packed input) or
  a nested tensor (what `nn.TransformerEncoder` makes of a padded batch with a
  `src_key_padding_mask` in eval mode): the mean of each sample over its own
  steps, padding left out, `(N, F)` (`reduced="averaged"`); `source_shape` is the
  longest sample's.
* a layer whose output has no floating-point tensor, whose first dimension is not
  the batch (an RNN's `(T, N, F)` without `batch_first`), whose shape changes
  between chunks, or whose reduction fails is left out: the payload's `skipped`
  names it with the reason (the `Prober` logs each layer and reason once, as a
  warning).
* autocast is off for the whole probe, the model's forward included: a probe is
  the model in its own dtypes, comparable from one probe to the next whether
  `run.probe()` is called inside an autocast region or not, and the packing
  (float16 features) is not cast behind its back.
* `predictions`: the argmax over the last dimension of the model's output when it
  is a floating-point `(N, classes)` tensor, else none.

Values travel as little-endian float16 in C order. Magnitudes beyond float16's
range (65504) become +-inf rather than being clamped: a clamped value would look
like a real one, an infinity says plainly that the layer overflowed float16.
Payloads are split so that each carries at most `max_payload_bytes` (8 MiB) of
packed values, about 11 MiB of base64: well under the server's 32 MiB body limit.
"""

from __future__ import annotations

import base64
import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

import torch
from torch import nn
from torch.nn.functional import adaptive_avg_pool2d
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from layerwatch import wire
from layerwatch.errors import ConfigError
from layerwatch.logs import logger
from layerwatch.options import DEFAULT_ATTRIBUTION_STEPS
from layerwatch.probe.attribution import integrated_gradients
from layerwatch.probe.inputs import DEFAULT_MAX_SAMPLES, ProbeInputs, ProbeSet, pack_int32
from layerwatch.reduce.statistics import first_float_tensor

__all__ = [
    "DEFAULT_MAX_SAMPLES",
    "MAX_PAYLOAD_BYTES",
    "ProbeInputs",
    "ProbeSet",
    "check_probe_options",
    "run_probe",
]


MAX_PAYLOAD_BYTES: Final = 8 * 1024 * 1024
"""Most packed bytes (features, maps, labels, predictions) of one `wire.Probe`."""

_ForwardHook = Callable[[nn.Module, tuple[object, ...], object], None]


def check_probe_options(
    *, features: int, maps: int, map_size: int, max_channels: int, batch_size: int
) -> None:
    """Raise `ConfigError` unless the caps fit the wire format; `run_probe()` calls it
    first, and `Run.watch()` should too, so that a mistake shows before training."""
    options = {"features": features, "map_size": map_size, "max_channels": max_channels,
               "batch_size": batch_size, "maps": maps}  # fmt: skip
    for name, value in options.items():
        least = 0 if name == "maps" else 1  # maps=0 sends no feature maps
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"`{name}` must be an int of at least {least}, not {value!r}")
    # One layer's values: samples x features, or maps x channels x map_size^2.
    if features > wire.MAX_PROBE_VALUES // wire.MAX_PROBE_SAMPLES:
        most = wire.MAX_PROBE_VALUES // wire.MAX_PROBE_SAMPLES
        raise ConfigError(f"`features` must be at most {most}, not {features}")
    if maps > wire.MAX_PROBE_SAMPLES or maps * max_channels * map_size**2 > wire.MAX_PROBE_VALUES:
        raise ConfigError(
            f"`maps` x `max_channels` x `map_size`^2 must be at most {wire.MAX_PROBE_VALUES}"
        )


@dataclass
class _Layer:
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
class _Options:
    features: int
    maps: int
    map_size: int
    max_channels: int
    start: int = 0  # first sample of the chunk running now
    rows: int = 0  # its sample count


def run_probe(
    model: nn.Module,
    probe_set: ProbeSet,
    modules: Sequence[tuple[str, nn.Module]],
    *,
    step: int,
    rank: int = 0,
    features: int = 1024,
    maps: int = 16,
    map_size: int = 32,
    max_channels: int = 64,
    batch_size: int = 256,
    max_payload_bytes: int = MAX_PAYLOAD_BYTES,
    attributions: int = 0,
    attribution_steps: int = DEFAULT_ATTRIBUTION_STEPS,
) -> list[wire.Probe]:
    """Run the probe inputs through `model` and return its layers' outputs as payloads.

    The model runs in eval mode under `torch.no_grad()` in chunks of `batch_size`
    samples, with a temporary forward hook on each of `modules` (`(name, module)`
    pairs, e.g. from `selection.select_leaves`). `torch.inference_mode()` is not used: tensors
    a forward caches on a module (rotary tables, masks) would become inference
    tensors that training's autograd then refuses.

    Afterwards the model is as before: every module's `training` flag, the CPU and
    CUDA RNG states (a forward may draw even in eval mode), the grad mode and the
    parameters' `.grad` (never touched). Eval mode keeps BatchNorm's running
    statistics still; a normalisation module kept training by an overridden
    `train()` has its running statistics and `num_batches_tracked` put back, and
    any other buffer the forward changed (by its version counter) is logged.
    DataParallel wrappers are unwrapped: no collective runs on one rank alone.

    Returns payloads of the same `step`, each under `max_payload_bytes` of packed
    data (a single bigger layer goes alone); the first carries the labels and the
    predictions. With `attributions` > 0 (Captum needed, extra `attribution`), the
    first payload also carries integrated gradients of the first `attributions`
    samples toward their labels (else the predicted class), `attribution_steps`
    steps each, evaluated `batch_size` inputs at a time (Captum's
    `internal_batch_size`), so memory stays that of one probe chunk; see
    `layerwatch.probe.attribution`. When the forward raises, the hooks are removed,
    the state restored, one warning logged and `[]` returned: a probe never stops training. Only bad
    options raise (`ConfigError`, see `check_probe_options`).
    """
    check_probe_options(features=features, maps=maps, map_size=map_size,
                        max_channels=max_channels, batch_size=batch_size)  # fmt: skip
    names = [name for name, _ in modules]
    if len(set(names)) != len(names):
        raise ConfigError("probed modules need distinct names")
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    layers = [_Layer(name) for name in names]
    options = _Options(features, maps, map_size, max_channels)
    try:
        with kept_state(model) as device, _autocast_off(device):
            predictions = _forward(model, probe_set, modules, layers, options, batch_size, device)
            explained = None
            if attributions:
                targets = probe_set.labels if probe_set.labels is not None else (
                    None if predictions is None else torch.cat(predictions)
                )  # fmt: skip
                explained = _attribute(model, probe_set, targets, attributions,
                                       attribution_steps, batch_size, device)  # fmt: skip
            packed = None if predictions is None else pack_int32(torch.cat(predictions))
            probe_layers = [_packed_layer(layer, probe_set.samples) for layer in layers]
        skipped = [wire.ProbeSkipped(name=layer.name, reason=layer.skipped[:500])
                   for layer in layers if layer.skipped]  # fmt: skip
        return _split([p for p in probe_layers if p is not None], step=step, rank=rank,
                      samples=probe_set.samples, labels=probe_set.packed_labels,
                      predictions=packed, attributions=explained, skipped=skipped,
                      max_bytes=max_payload_bytes)  # fmt: skip
    except Exception:
        logger.warning("layerwatch: the probe at step %d failed; nothing sent", step, exc_info=True)
        return []


@contextlib.contextmanager
def kept_state(model: nn.Module) -> Iterator[torch.device | None]:
    """Put the model's state back on leaving, whatever ran; yields the model's device.

    Kept: every module's `training` flag, the CPU and CUDA RNG states, and the
    normalisation modules' running statistics; any other buffer that changed (by its
    version counter) is logged. Parameters' `.grad` need no keeping: nothing run
    here accumulates into them.
    """
    params = list(model.parameters())
    first = params[0] if params else next(iter(model.buffers()), None)
    cuda = sorted({p.device.index or 0 for p in params if p.is_cuda})
    flags = [(module, module.training) for module in model.modules()]  # the model first
    norms = [b for m in model.modules() if isinstance(m, _NormBase) for b in m.buffers()]
    saved = [(b, b.clone()) for b in norms]  # running stats: a few KiB
    versions = [(name, b, b._version) for name, b in model.named_buffers()]
    try:
        with torch.random.fork_rng(devices=cuda):
            yield None if first is None else first.device
    finally:
        model.train(flags[0][1])  # symmetric with eval(): a user's train() override runs
        for module, training in flags:
            module.training = training
        with torch.no_grad():
            for buffer, copy in saved:
                # batch_norm updates its running stats without bumping their version
                # counter: compare values, and write only what changed, so that a graph
                # that saved these buffers is not invalidated for nothing.
                if not torch.equal(buffer, copy):
                    buffer.copy_(copy)
        restored = {id(b) for b in norms}
        changed = [n for n, b, v in versions if b._version != v and id(b) not in restored]
        if changed:
            logger.warning(
                "layerwatch: the probe's eval forward changed buffers %s; left as they are",
                ", ".join(changed),
            )


@contextlib.contextmanager
def _autocast_off(device: torch.device | None) -> Iterator[None]:
    """Autocast disabled on the CPU and on the model's device, whatever the caller's
    context: under CPU autocast `torch.cat` of float16 tensors fails outright."""
    types = {"cpu"} | ({device.type} if device is not None else set())
    with contextlib.ExitStack() as stack:
        for device_type in sorted(types):
            if torch.amp.is_autocast_available(device_type):
                stack.enter_context(torch.autocast(device_type, enabled=False))
        yield


def _forward(model: nn.Module, probe_set: ProbeSet, modules: Sequence[tuple[str, nn.Module]],
             layers: list[_Layer], options: _Options, batch_size: int,
             device: torch.device | None,
) -> list[torch.Tensor] | None:  # fmt: skip
    """Run every chunk in eval mode with the hooks on (the caller keeps the state).

    Returns the predictions of each chunk, or None when the output is not logits."""
    handles = []
    try:
        with torch.no_grad():
            model.eval()
            handles = [module.register_forward_hook(_hook(layer, options))
                       for layer, (_, module) in zip(layers, modules, strict=True)]  # fmt: skip
            predictions: list[torch.Tensor] | None = []
            for rows, args, kwargs in probe_set.chunks(batch_size, device):
                options.rows = rows
                for layer in layers:
                    layer.seen = False
                output = first_float_tensor(model(*args, **kwargs))
                if predictions is None or output is None or not _is_logits(output, rows):
                    predictions = None
                else:
                    predictions.append(output.argmax(-1).to(torch.int32))  # (rows,)
                options.start += rows
            return predictions
    finally:
        for handle in handles:
            handle.remove()


def _is_logits(output: torch.Tensor, rows: int) -> bool:
    return output.dim() == 2 and output.shape[0] == rows and output.shape[1] >= 2


def _hook(layer: _Layer, options: _Options) -> _ForwardHook:
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


def _collect(layer: _Layer, output: object, options: _Options) -> None:
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


def _collect_ragged(layer: _Layer, parts: list[torch.Tensor], options: _Options) -> None:
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


def _feature_maps(x: torch.Tensor, options: _Options) -> torch.Tensor:
    x = x[:, : options.max_channels]  # (m, c, H, W)
    h, w = x.shape[2:]
    if h > options.map_size or w > options.map_size:
        x = adaptive_avg_pool2d(x, (min(h, options.map_size), min(w, options.map_size)))
    return x.to(torch.float16)


def _packed_layer(layer: _Layer, samples: int) -> wire.ProbeLayer | None:
    """`_to_wire`, or None with the layer marked skipped when its values can't be packed."""
    try:
        return _to_wire(layer, samples)
    except Exception as exc:
        layer.skipped = f"its output could not be packed: {type(exc).__name__}: {exc}"
        return None


def _to_wire(layer: _Layer, samples: int) -> wire.ProbeLayer | None:
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


def _attribute(model: nn.Module, probe_set: ProbeSet, targets: torch.Tensor | None, count: int,
               steps: int, batch_size: int, device: torch.device | None,
) -> wire.ProbeAttributions | None:  # fmt: skip
    """Integrated gradients of the first `count` samples, or None (logged) when it can't be."""
    inputs = probe_set.single_input(min(count, probe_set.samples), device)
    if inputs is None:
        logger.warning("layerwatch: attributions need probe inputs of one float tensor; none sent")
        return None
    if targets is None:
        logger.warning("layerwatch: attributions need labels or logits to explain; none sent")
        return None
    try:
        return integrated_gradients(model, inputs, targets[: len(inputs)], steps=steps,
                                    batch_size=batch_size)  # fmt: skip
    except Exception:
        logger.warning("layerwatch: integrated gradients failed; none sent", exc_info=True)
        return None


def _split(layers: list[wire.ProbeLayer], *, step: int, rank: int, samples: int,
           labels: bytes | None, predictions: bytes | None,
           attributions: wire.ProbeAttributions | None, skipped: list[wire.ProbeSkipped],
           max_bytes: int,
) -> list[wire.Probe]:  # fmt: skip
    """Group layers into payloads of at most `max_bytes` packed bytes, in order; the
    first also carries labels, predictions, attributions and the skipped layers."""
    if not (layers or skipped) and labels is None and predictions is None and attributions is None:
        return []
    groups: list[list[wire.ProbeLayer]] = [[]]
    size = (0 if labels is None else 4 * samples) + (0 if predictions is None else 4 * samples)
    size += 0 if attributions is None else len(attributions.values)
    for layer in layers:
        nbytes = len(layer.features) + len(layer.maps or b"")
        full = len(groups[-1]) >= 1024  # `wire.Probe.layers` max_length
        if groups[-1] and (size + nbytes > max_bytes or full):
            groups.append([])
            size = 0
        groups[-1].append(layer)
        size += nbytes
    first = wire.Probe(step=step, rank=rank, samples=samples, layers=groups[0], labels=labels,
                       predictions=predictions, attributions=attributions,
                       skipped=skipped[:1024])  # fmt: skip
    return [first] + [wire.Probe(step=step, rank=rank, samples=samples, layers=group)
                      for group in groups[1:]]  # fmt: skip
