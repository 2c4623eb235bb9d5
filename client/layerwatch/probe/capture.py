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

from collections.abc import Sequence
from typing import Final

import torch
from torch import nn

from layerwatch import wire
from layerwatch.errors import ConfigError
from layerwatch.logs import logger
from layerwatch.options import DEFAULT_ATTRIBUTION_STEPS
from layerwatch.probe.attribution import integrated_gradients
from layerwatch.probe.inputs import DEFAULT_MAX_SAMPLES, ProbeInputs, ProbeSet, pack_int32
from layerwatch.probe.layers import Caps, LayerOutputs, make_hook, pack_layer
from layerwatch.probe.state import autocast_off, kept_state
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
    layers = [LayerOutputs(name) for name in names]
    options = Caps(features, maps, map_size, max_channels)
    try:
        with kept_state(model) as device, autocast_off(device):
            predictions = _forward(model, probe_set, modules, layers, options, batch_size, device)
            explained = None
            if attributions:
                targets = probe_set.labels if probe_set.labels is not None else (
                    None if predictions is None else torch.cat(predictions)
                )  # fmt: skip
                explained = _attribute(model, probe_set, targets, attributions,
                                       attribution_steps, batch_size, device)  # fmt: skip
            packed = None if predictions is None else pack_int32(torch.cat(predictions))
            probe_layers = [pack_layer(layer, probe_set.samples) for layer in layers]
        skipped = [wire.ProbeSkipped(name=layer.name, reason=layer.skipped[:500])
                   for layer in layers if layer.skipped]  # fmt: skip
        return _split([p for p in probe_layers if p is not None], step=step, rank=rank,
                      samples=probe_set.samples, labels=probe_set.packed_labels,
                      predictions=packed, attributions=explained, skipped=skipped,
                      max_bytes=max_payload_bytes)  # fmt: skip
    except Exception:
        logger.warning("layerwatch: the probe at step %d failed; nothing sent", step, exc_info=True)
        return []


def _forward(model: nn.Module, probe_set: ProbeSet, modules: Sequence[tuple[str, nn.Module]],
             layers: list[LayerOutputs], options: Caps, batch_size: int,
             device: torch.device | None,
) -> list[torch.Tensor] | None:  # fmt: skip
    """Run every chunk in eval mode with the hooks on (the caller keeps the state).

    Returns the predictions of each chunk, or None when the output is not logits."""
    handles = []
    try:
        with torch.no_grad():
            model.eval()
            handles = [module.register_forward_hook(make_hook(layer, options))
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
