"""Reduce a tensor to small summaries on its own device: statistics, a histogram, unit means.

Two paths compute the same numbers:

* `activation_stats` and `Summarizer.summarize(..., sync=False)` never read a value
  back to the host: no `.item()`, `.cpu()`, `.tolist()`, no `if` on a tensor, no
  boolean-mask indexing, no `torch.histc` (its range is a Python number). They run
  inside hooks on accelerators, where a host read would stall the training stream.
* With ``sync=True`` (CPU tensors, on the reducer thread; see `worker.py`) a host
  read costs nothing but the read, so the common all-finite case takes a path
  of at most five branch-free passes over the data instead of about ten, with
  its temporaries in a reused per-thread scratch buffer (fresh large buffers
  cost a page fault per 4 KiB).

Statistics are exact (float32 arithmetic). Histograms of tensors larger than the
sample size are estimated from a uniform random sample of element positions, drawn
once per tensor size with a private generator (the user's RNG is never touched) and
reused at every capture, so a distribution over time follows the same positions.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn
from torch.nn.modules import conv, dropout, padding, pooling
from torch.nn.modules.batchnorm import _NormBase

from layerwatch.reduce.small import SMALL, relative_change_small, summarize_small
from layerwatch.reduce.summary import Summary
from layerwatch.wire import DEFAULT_BINS, DEFAULT_SAMPLE_SIZE, MAX_UNITS, STAT_INDEX, STAT_NAMES

__all__ = [
    "DEFAULT_BINS",
    "DEFAULT_SAMPLE_SIZE",
    "NUM_STATS",
    "Summarizer",
    "Summary",
    "activation_stats",
    "first_float_tensor",
    "packed_components",
    "relative_change",
    "unit_dim",
]

NUM_STATS = len(STAT_NAMES)
_MIN, _MAX, _NONFINITE, _NUMEL = (STAT_INDEX[s] for s in ("min", "max", "nonfinite", "numel"))
_FLOAT32_SAFE = 1e30  # products below this are far from float32's overflow (3.4e38)
# The CPU fast path's scratch: elementwise temporaries go into a reused buffer, in
# chunks of at most this many elements (4 MiB of float32 per reducing thread).
_SCRATCH_ELEMENTS = 1 << 20
_EXACT_COUNT = 1 << 24  # float32 counts integers exactly up to here (a sum of 0/1s)
_scratch = threading.local()
# Modules whose outputs are channel-first, `(N, C, L...)`: their units are dim 1
# whatever the rank. Decided by class, never by name: Hugging Face's GPT-2
# `Conv1D` is a linear layer with `(N, T, F)` outputs.
_CHANNEL_FIRST: tuple[type[nn.Module], ...] = (
    conv._ConvNd,  # Conv1d-3d, ConvTranspose1d-3d, their lazy and quantised kin
    _NormBase,  # BatchNorm1d-3d, InstanceNorm1d-3d, SyncBatchNorm
    nn.GroupNorm,
    nn.LocalResponseNorm,
    pooling._MaxPoolNd,
    pooling._AvgPoolNd,
    pooling._AdaptiveMaxPoolNd,
    pooling._AdaptiveAvgPoolNd,
    pooling._LPPoolNd,
    pooling._MaxUnpoolNd,
    nn.Upsample,
    dropout.Dropout1d,
    dropout.Dropout2d,
    dropout.Dropout3d,
    dropout.FeatureAlphaDropout,
    padding._ReflectionPadNd,
    padding._ReplicationPadNd,
    padding._CircularPadNd,
)
# For callers that pass a class name: torch's own channel-first classes, by exact
# name (`Conv1d` is one, GPT-2's `Conv1D` is not).
_CHANNEL_NAMES = frozenset(
    cls.__name__
    for cls in vars(nn).values()
    if isinstance(cls, type) and issubclass(cls, _CHANNEL_FIRST)
)


def activation_stats(tensor: torch.Tensor) -> torch.Tensor:
    """Return the statistics of `tensor` as one float32 tensor of shape `(NUM_STATS,)`.

    The order is `wire.STAT_NAMES`: mean, std, min, max, abs_mean and l2 over the
    finite elements (NaN when there is none; std is the population std), zero_frac
    over all elements, the count of non-finite elements, and numel. The result lives
    on `tensor`'s device; computing it queues about twenty small kernels (ten passes
    over the data, a few full-size temporaries) and never waits.
    """
    with torch.no_grad():
        x = tensor.detach().reshape(-1)  # (N,)
        if x.dtype != torch.float32:
            x = x.to(torch.float32)  # bf16/fp16 are upcast; float64 is summarised in float32
        n = x.numel()
        if n == 0:
            empty = torch.full((NUM_STATS,), float("nan"), dtype=torch.float32, device=x.device)
            empty[[_NONFINITE, _NUMEL]] = 0.0
            return empty
        # One pass writes the finite values with 0 for the rest; comparing it with x
        # gives the finite mask (NaN != 0, inf != 0) without `isfinite`'s temporaries.
        x_finite = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)  # (N,)
        finite = x == x_finite  # (N,) bool
        count = torch.count_nonzero(finite)  # () int64; 0 makes mean 0/0 = NaN
        mean = x_finite.sum() / count  # ()
        # Non-finite -> mean: it lies within [min, max] and adds 0 to the squared
        # deviations, so one tensor serves min, max and std. With no finite element,
        # mean is NaN and so are they.
        x_centred = torch.where(finite, x, mean)  # (N,)
        lo, hi = torch.aminmax(x_centred)  # (), ()
        deviation = x_centred - mean  # (N,)
        squares = torch.dot(deviation, deviation)  # () sum of squared deviations
        std = (squares / count).sqrt()  # () population std (ddof=0)
        abs_mean = torch.linalg.vector_norm(x_finite, ord=1) / count  # ()
        l2 = (squares + count * mean * mean).sqrt()  # () sum x^2 = sum (x-m)^2 + n m^2
        zero_frac = (n - torch.count_nonzero(x)) / n  # () NaN and inf are not zero
        nonfinite = n - count  # () int64, exact
        numel = torch.full_like(mean, n)  # () a fill, not a host-to-device copy
        stats = torch.stack([mean, std, lo, hi, abs_mean, l2, zero_frac, nonfinite, numel])
        return stats.to(torch.float32)  # (NUM_STATS,); a no-op unless the default is float64


def first_float_tensor(
    output: object, _depth: int = 0, *, nested: bool = False
) -> torch.Tensor | None:
    """The tensor a module output is summarised by: itself, or the first floating-point
    tensor in a tuple, list or dict (searched a few levels deep); None when there is none.

    A nested tensor (the ragged batch `nn.TransformerEncoder` makes of a padded one
    in eval mode) is returned as its components concatenated along their first
    dimension, `(B, T_i, F)` -> `(sum T_i, F)`, so padding never enters the
    statistics; with `nested=True` it is returned as it is. A `PackedSequence` is
    summarised by its `data`, `(sum T_i, F)`, which comes first in it.
    """
    if isinstance(output, torch.Tensor):
        if not output.is_floating_point():
            return None
        return output if nested or not output.is_nested else packed_components(output)
    if _depth >= 3:
        return None
    items: Iterable[object]
    if isinstance(output, dict):
        items = output.values()
    elif isinstance(output, (tuple, list)):
        items = output
    else:
        return None
    for item in items:
        found = first_float_tensor(item, _depth + 1, nested=nested)
        if found is not None:
            return found
    return None


def packed_components(tensor: torch.Tensor) -> torch.Tensor:
    """The components of nested `tensor` concatenated along their first dimension,
    `(B, T_i, *rest)` -> `(sum T_i, *rest)`; flattened to 1-D when `rest` is ragged too."""
    with torch.no_grad():
        parts = [part.detach() for part in tensor.unbind()]
        if not parts:
            return torch.empty(0, dtype=tensor.dtype, device=tensor.device)
        if len({part.shape[1:] for part in parts}) == 1 and parts[0].dim() >= 1:
            return torch.cat(parts)
        return torch.cat([part.reshape(-1) for part in parts])


class Summarizer:
    """Computes `Summary`s with one watch's settings; keeps the sample positions per size."""

    def __init__(self, *, bins: int | None = DEFAULT_BINS, sample_size: int | None = None) -> None:
        self.bins = bins
        self.sample_size = DEFAULT_SAMPLE_SIZE if sample_size is None else sample_size
        self.exact = sample_size == 0
        self._positions: dict[tuple[int, torch.device], torch.Tensor] = {}
        self._generators: dict[torch.device, torch.Generator] = {}

    def summarize(self, tensor: torch.Tensor, *, units: int | None, sync: bool) -> Summary:
        """Reduce `tensor`; `units` is the dimension whose per-unit means to keep, if any.

        With `sync=False` nothing waits for the device; with `sync=True` (CPU only)
        values are read back to choose the fast path.
        """
        with torch.no_grad():
            x = tensor.detach()
            if x.dtype != torch.float32:
                x = x.to(torch.float32)  # bf16/fp16 upcast; float64 summarised in float32
            flat = x.reshape(-1)
            if sync and 0 < flat.numel() <= min(SMALL, self.sample_size or SMALL):
                small = summarize_small(x, units=units, bins=self.bins)
                if small is not None:
                    return small
            fast = _fast_stats(flat) if sync else None
            stats = activation_stats(flat) if fast is None else fast[0]
            counts, sampled = None, None
            if self.bins is not None and flat.numel():
                sample, sampled = self._sample(flat)
                if fast is not None:
                    counts = _cpu_histogram(sample, fast[1], fast[2], self.bins)
                else:
                    counts = _histogram(sample, stats[_MIN], stats[_MAX], self.bins)
            means = _unit_means(x, units) if units is not None and x.numel() else None
            return Summary(stats, counts, sampled, means)

    def _sample(self, flat: torch.Tensor) -> tuple[torch.Tensor, int | None]:
        n = flat.numel()
        if self.exact or n <= self.sample_size:
            return flat, None
        key = (n, flat.device)
        positions = self._positions.get(key)
        if positions is None:
            generator = self._generators.get(flat.device)
            if generator is None:
                generator = torch.Generator(flat.device)
                generator.manual_seed(0x5EED)
                self._generators[flat.device] = generator
            drawn = torch.randint(n, (self.sample_size,), generator=generator, device=flat.device)
            positions = self._positions[key] = drawn.sort().values  # sorted: cache-friendly
        if flat.device.type == "cpu":  # into a reused buffer (see `_scratch_buffer`)
            out = _scratch_buffer("sample", self.sample_size, flat.dtype)[: self.sample_size]
            return torch.index_select(flat, 0, positions, out=out), self.sample_size
        return flat.index_select(0, positions), self.sample_size


def _fast_stats(x: torch.Tensor) -> tuple[torch.Tensor, float, float] | None:
    """Statistics of a flat float32 CPU tensor, with its finite range as Python floats;
    None when it holds a non-finite value (the caller then takes the general path).

    At most five passes over the data; the arithmetic on the sums is done in Python,
    which on the CPU is cheaper than a dozen tiny tensor operations. Zeros are
    counted through `sign` (branch-free: `count_nonzero` took ten times as long on a
    ReLU output, whose zeros defeat the branch predictor).
    """
    n = x.numel()
    if n == 0 or x.device.type != "cpu":
        return None
    lo_t, hi_t = torch.aminmax(x)
    lo, hi = lo_t.item(), hi_t.item()
    if not (math.isfinite(lo) and math.isfinite(hi)):  # NaN propagates here
        return None
    total = x.sum().item()
    sum_sq = torch.dot(x, x).item()
    mean = total / n
    variance = sum_sq / n - mean * mean
    # sum(x^2)/n - mean^2 loses about mean^2/variance times float32's precision to
    # cancellation: past mean^2 = 100 variance (|mean| > 10 std), take the two-pass form.
    if variance <= 1e-2 * mean * mean:
        variance = _chunked(x, lambda part, out: torch.sub(part, mean, out=out).square_().sum())
        variance /= n
    abs_sum, nonzeros = _abs_sum_and_nonzeros(x, lo, hi, total)
    values = [mean, math.sqrt(max(variance, 0.0)), lo, hi, abs_sum / n, math.sqrt(sum_sq),
              (n - nonzeros) / n, 0.0, float(n)]  # fmt: skip
    return torch.tensor(values, dtype=torch.float32), lo, hi


def _abs_sum_and_nonzeros(x: torch.Tensor, lo: float, hi: float, total: float) -> tuple[float, int]:
    """Sum of `|x|` and count of nonzero elements of finite flat float32 CPU `x`, whose
    range and sum are known, through `s = sign(x)`: `x . s` and `s . s` (or the sum of
    `s` when no element is negative). Branch-free: `count_nonzero` took ten times as
    long on a ReLU output, whose zeros defeat the branch predictor."""
    n = x.numel()
    if lo > 0 or hi < 0:
        return abs(total), n
    if n > _EXACT_COUNT:  # float32 sums of 0/1 are exact below this
        return _chunked(x, lambda part, out: torch.abs(part, out=out).sum()), int(
            torch.count_nonzero(x).item()
        )
    if lo >= 0 or hi <= 0:  # all of one sign: |x| sums to |total|
        return abs(total), round(
            abs(_chunked(x, lambda part, out: torch.sign(part, out=out).sum()))
        )
    abs_sum = nonzeros = 0.0
    for part, out in _chunks(x):
        sign = torch.sign(part, out=out)
        abs_sum += torch.dot(part, sign).item()
        nonzeros += torch.dot(sign, sign).item()
    return abs_sum, round(nonzeros)


_Reduce = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _scratch_buffer(name: str, size: int, dtype: torch.dtype) -> torch.Tensor:
    """This thread's scratch buffer `name`, at least `size` elements of `dtype`, reused
    from call to call (a fresh large buffer costs a page fault per 4 KiB)."""
    buffers: dict[str, torch.Tensor] = _scratch.__dict__.setdefault("buffers", {})
    buffer = buffers.get(name)
    if buffer is None or buffer.numel() < size or buffer.dtype != dtype:
        buffer = buffers[name] = torch.empty(size, dtype=dtype)
    return buffer


def _chunks(*tensors: torch.Tensor) -> Iterator[tuple[torch.Tensor, ...]]:
    """Aligned chunks of flat tensors of one length, each with a float32 scratch chunk."""
    n = tensors[0].numel()
    buffer = _scratch_buffer("chunk", min(n, _SCRATCH_ELEMENTS), torch.float32)
    for start in range(0, n, _SCRATCH_ELEMENTS):
        parts = tuple(t[start : start + _SCRATCH_ELEMENTS] for t in tensors)
        yield (*parts, buffer[: parts[0].numel()])


def _chunked(x: torch.Tensor, reduce: _Reduce) -> float:
    """Sum of `reduce(part, out)` over the chunks of flat float32 `x` (see `_chunks`)."""
    return sum(reduce(part, out).item() for part, out in _chunks(x))


def _cpu_histogram(sample: torch.Tensor, lo: float, hi: float, bins: int) -> torch.Tensor:
    """`_histogram` of a finite CPU sample whose range is known on the host; the bin
    index is computed in scratch buffers, chunk by chunk."""
    width = hi - lo if hi > lo else math.inf  # lo == hi: everything in bin 0
    scale = bins / width
    # Two passes: about a third less work than the overflow-safe form, used when
    # bins / width would overflow float32 ((x - lo) / width stays within [0, 1]).
    safe = scale * max(abs(lo), abs(hi), 1.0) >= _FLOAT32_SAFE
    counts = torch.zeros(bins, dtype=torch.int64)
    index = _scratch_buffer("bins", min(sample.numel(), _SCRATCH_ELEMENTS), torch.int32)
    for part, out in _chunks(sample):
        if safe:
            torch.sub(part, lo, out=out).div_(width).mul_(bins)
        else:
            torch.mul(part, scale, out=out).sub_(lo * scale)
        chunk = index[: part.numel()]
        chunk.copy_(out)  # truncates toward 0: a floor, for values >= 0
        counts += torch.bincount(chunk.clamp_(0, bins - 1), minlength=bins)
    return counts


def _histogram(sample: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bins: int) -> torch.Tensor:
    """Counts of the finite values of `sample` in `bins` equal bins over `[lo, hi]`, as
    int64, without reading anything back: the range stays a tensor, and a non-finite
    value goes to a bin that is thrown away (`bincount` would read its maximum)."""
    # hi - lo overflows float32 for ranges wider than its largest value: those are
    # binned in halves. Halving the others would flush subnormal bounds to 0, so the
    # choice is made per tensor, on the device (both are computed; the sample is small).
    huge = torch.maximum(lo.abs(), hi.abs()) > _FLOAT32_SAFE
    index = torch.where(
        huge,
        _bin_index(sample * 0.5, lo * 0.5, hi * 0.5, bins),
        _bin_index(sample, lo, hi, bins),
    )
    index = torch.where(torch.isfinite(sample), index, bins)
    counts = torch.zeros(bins + 1, dtype=torch.int64, device=sample.device)
    counts.index_add_(0, index, torch.ones_like(index))
    return counts[:bins]


def _bin_index(sample: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bins: int) -> torch.Tensor:
    width = hi - lo
    width = torch.where(width > 0, width, torch.full_like(width, math.inf))  # lo == hi: bin 0
    return ((sample - lo) / width * bins).to(torch.int64).clamp_(0, bins - 1)  # floor


def unit_dim(shape: torch.Size | tuple[int, ...], module: nn.Module | str) -> int | None:
    """The dimension of a module output whose entries are its units: channels (dim 1)
    for 4-D and 5-D outputs and for 3-D outputs of channel-first modules (convolutions,
    batch, instance and group norms, pooling, upsampling, channel dropout, padding by
    reflection), else the last dimension (features, as of `Linear`, `LayerNorm`, or
    GPT-2's `Conv1D`); None for outputs of fewer than two dimensions.

    `module` is the module itself, or its class name, which is matched against the
    names of torch's own channel-first classes (a user's class that shares one of
    them is then taken for it): callers should pass the module.
    """
    rank = len(shape)
    if rank < 2:
        return None
    if isinstance(module, str):
        channel_first = module in _CHANNEL_NAMES
    else:
        channel_first = isinstance(module, _CHANNEL_FIRST)
    if rank >= 4 or (rank == 3 and channel_first):
        return 1
    return rank - 1


def _unit_means(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean of each unit along `dim` over every other dimension (the first MAX_UNITS)."""
    if x.shape[dim] > MAX_UNITS:
        x = x.narrow(dim, 0, MAX_UNITS)
    others = tuple(d for d in range(x.dim()) if d != dim)
    return x.mean(dim=others)


def relative_change(
    new: torch.Tensor, old: torch.Tensor, old_norm: torch.Tensor | None = None
) -> torch.Tensor:
    """`||new - old|| / ||old||` as a 0-d float32 tensor on their device (no host read);
    `old_norm` saves a pass when `||old||` is already known."""
    old32 = old.detach().to(torch.float32)
    new32 = new.detach().to(torch.float32)
    if new32.device.type == "cpu" and new32.numel() <= SMALL and old_norm is not None:
        return relative_change_small(new32, old32, old_norm)
    if new32.device.type == "cpu" and new32.is_contiguous() and old32.is_contiguous():
        squares = 0.0  # the difference goes through a scratch buffer, chunk by chunk
        for a, b, out in _chunks(new32.reshape(-1), old32.reshape(-1)):
            squares += torch.dot(diff := torch.sub(a, b, out=out), diff).item()
        difference = torch.tensor(math.sqrt(squares), dtype=torch.float32)
    else:
        difference = torch.linalg.vector_norm(new32 - old32)
    if old_norm is None:
        old_norm = torch.linalg.vector_norm(old32)
    ratio: torch.Tensor = difference / old_norm
    return ratio
