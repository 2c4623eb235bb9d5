"""Records to batches: `build_batch()` turns records into one columnar `wire.Batch`,
reading all their tensors back with one device-to-host copy; `split_batch()` halves
a batch the server found too large.
"""

from __future__ import annotations

import array
import base64
import math
import sys
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import pydantic

from layerwatch import wire

if TYPE_CHECKING:
    import torch

from layerwatch.records import (
    NEVER,
    ModelRecord,
    NonfiniteRecord,
    Record,
    ScalarRecord,
    SummaryRecord,
    TensorKey,
    TensorMeta,
)

__all__ = ["build_batch", "count_records", "split_batch"]


# -- records -> batches -------------------------------------------------------------

_M = TypeVar("_M", bound=pydantic.BaseModel)
OnInvalid = Callable[[str, pydantic.ValidationError], None]


_MIN, _MAX, _NONFINITE = (wire.STAT_INDEX[s] for s in ("min", "max", "nonfinite"))


def build_batch(
    records: list[Record],
    *,
    rank: int,
    tensors: Mapping[TensorKey, TensorMeta],
    described: set[TensorKey],
    on_invalid: OnInvalid,
) -> tuple[wire.Batch | None, int]:
    """One batch of `records` in columnar blocks, and the number of rows it holds.

    A later record of one (name, kind, step) replaces an earlier one; a block that
    does not validate (a bad scalar name, say) is left out and reported to
    `on_invalid`. `TensorInfo` goes along for the tensors not in `described`, which
    is updated. The batch is None when no row is left.
    """
    summaries: dict[TensorKey, dict[int, SummaryRecord]] = {}
    scalars: dict[str, dict[int, ScalarRecord]] = {}
    models: list[wire.ModelTree] = []
    sentinels: list[NonfiniteRecord] = []
    device_values: list[torch.Tensor] = []
    for record in records:
        if isinstance(record, SummaryRecord):
            summaries.setdefault((record.name, record.kind), {})[record.step] = record
            summary = record.summary
            device_values.append(summary.stats)
            for value in (summary.counts, summary.units, record.change):
                if value is not None:
                    device_values.append(value)
        elif isinstance(record, ScalarRecord):
            scalars.setdefault(record.name, {})[record.step] = record
            if not isinstance(record.value, (int, float)):
                device_values.append(record.value)
        elif isinstance(record, ModelRecord):
            models.append(record.tree)
        else:
            sentinels.append(record)
            device_values.extend(record.first)
    host = _to_host(device_values)  # the one device-to-host copy (per device)
    blocks = _Blocks(on_invalid)
    for (name, kind), by_step in summaries.items():
        blocks.add_summaries(name, kind, [by_step[s] for s in sorted(by_step)], host)
    for name, by_step_scalar in scalars.items():
        points = [by_step_scalar[s] for s in sorted(by_step_scalar)]
        values = [
            float(p.value) if isinstance(p.value, (int, float)) else host[id(p.value)][0]
            for p in points
        ]
        blocks.add(
            wire.Scalars, name=name, steps=[p.step for p in points], values=values,
            times=[p.time for p in points],
        )  # fmt: skip
    kept = blocks.rows + len(models)
    events = [e for r in sentinels if (e := _event(r, host, on_invalid)) is not None]
    if not kept and not events:
        return None, 0
    infos = []
    for key in blocks.tensors:
        if key not in described and key in tensors:
            module_type, shape, dtype = tensors[key]
            info = _validate(
                on_invalid, wire.TensorInfo, name=key[0], kind=key[1],
                module_type=module_type, shape=list(shape), dtype=dtype,
            )  # fmt: skip
            if info is not None:
                infos.append(info)
                described.add(key)
    batch = wire.Batch(
        batch_id=uuid.uuid4().hex, rank=rank, tensors=infos, models=models,
        nonfinite=events[: wire.MAX_NONFINITE_EVENTS], **blocks.by_field,
    )  # fmt: skip
    return batch, kept


def _event(
    record: NonfiniteRecord, host: _Host, on_invalid: OnInvalid
) -> wire.NonfiniteEvent | None:
    """The event in a sentinel's record: the earliest step at which a slot turned
    non-finite, its first slot in order, and the others that turned at that step."""
    # Per slot, the earliest step over the devices it ran on (NEVER when it did not turn).
    first = [min(values) for values in zip(*(host[id(t)] for t in record.first), strict=True)]
    step = min(first, default=NEVER)
    if step >= NEVER:
        return None
    fired = [name for name, at in zip(record.names, first, strict=True) if at == step and name]
    if not fired:  # only a slot without a name: never expected
        return None
    (tensor, kind), others = fired[0], fired[1:]
    return _validate(
        on_invalid, wire.NonfiniteEvent, step=int(step), tensor=tensor, kind=kind,
        also=[name for name, _ in others[: wire.MAX_NONFINITE_ALSO]],
    )  # fmt: skip


class _Blocks:
    """The columnar blocks of a batch as they are built, and the rows they hold."""

    def __init__(self, on_invalid: OnInvalid) -> None:
        self.on_invalid = on_invalid
        self.by_field: dict[str, list[Any]] = {field: [] for field in _BLOCK_FIELDS}
        self.tensors: dict[TensorKey, None] = {}  # in order of first appearance
        self.rows = 0

    def add(self, model: type[_Block], **fields: Any) -> None:
        block = _validate(self.on_invalid, model, **fields)
        if block is None:
            return
        self.by_field[_BLOCK_FIELDS_BY_TYPE[model]].append(block)
        self.rows += len(block.steps)
        if not isinstance(block, wire.Scalars):
            kind = block.kind if not isinstance(block, wire.WeightChanges) else "weight"
            self.tensors[(block.name, kind)] = None

    def add_summaries(
        self, name: str, kind: wire.Kind, rows: list[SummaryRecord], host: _Host
    ) -> None:
        steps = [r.step for r in rows]
        stats = [host[id(r.summary.stats)] for r in rows]
        columns: dict[str, list[float] | list[int]] = {
            stat: [values[i] for values in stats] for i, stat in enumerate(wire.STAT_NAMES)
        }
        # Counts come exact from the host (numel) or clamped (float32 nonfinite).
        columns["numel"] = [r.numel for r in rows]
        columns["nonfinite"] = [
            min(max(round(values[_NONFINITE]), 0), r.numel)
            for r, values in zip(rows, stats, strict=True)
        ]
        self.add(wire.Stats, name=name, kind=kind, steps=steps, **columns)
        with_counts = [
            (r, s) for r, s in zip(rows, stats, strict=True) if r.summary.counts is not None
        ]
        if with_counts:
            self.add(
                wire.Histograms, name=name, kind=kind, steps=[r.step for r, _ in with_counts],
                counts=[_pack("I", host[id(r.summary.counts)], int) for r, _ in with_counts],
                lo=[_finite_or_zero(s[_MIN]) for _, s in with_counts],
                hi=[_finite_or_zero(s[_MAX]) for _, s in with_counts],
                sample_size=[r.summary.sample_size for r, _ in with_counts],
            )  # fmt: skip
        with_units = [r for r in rows if r.summary.units is not None]
        if with_units:
            self.add(
                wire.UnitMeans, name=name, kind=kind, steps=[r.step for r in with_units],
                values=[_pack("f", host[id(r.summary.units)], float) for r in with_units],
            )  # fmt: skip
        with_change = [r for r in rows if r.change is not None]
        if with_change:
            changes = [host[id(r.change)] for r in with_change]
            self.add(
                wire.WeightChanges, name=name, steps=[r.step for r in with_change],
                since_prev=[c[0] for c in changes], since_init=[c[1] for c in changes],
                update_ratio=[c[2] for c in changes],
            )  # fmt: skip


_Block = wire.Stats | wire.Histograms | wire.UnitMeans | wire.WeightChanges | wire.Scalars
_BLOCK_FIELDS_BY_TYPE: dict[type[_Block], str] = {
    wire.Stats: "stats",
    wire.Histograms: "histograms",
    wire.UnitMeans: "unit_means",
    wire.WeightChanges: "weight_changes",
    wire.Scalars: "scalars",
}
_BLOCK_FIELDS = tuple(_BLOCK_FIELDS_BY_TYPE.values())
_Host = dict[int, list[float]]


def _pack(code: str, values: list[float], convert: Callable[[float], Any]) -> str:
    """`values` as base64 of little-endian `array` items of type `code`."""
    packed = array.array(code, [convert(v) for v in values])
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


def _finite_or_zero(value: float) -> float:
    """A histogram edge: the range of a tensor without a finite value has no bins filled."""
    return value if math.isfinite(value) else 0.0


def split_batch(batch: wire.Batch) -> list[wire.Batch]:
    """`batch` as two batches of about half the rows each, with fresh batch ids.

    Model trees and non-finite events go with the first half.
    """
    blocks: list[_Block] = [b for field in _BLOCK_FIELDS for b in getattr(batch, field)]
    rows = [(b, i) for b, block in enumerate(blocks) for i in range(len(block.steps))]
    infos = {(info.name, info.kind): info for info in batch.tensors}
    halves = []
    for half, part in enumerate((rows[: len(rows) // 2], rows[len(rows) // 2 :])):
        picked: dict[int, list[int]] = {}
        for b, i in part:
            picked.setdefault(b, []).append(i)
        by_field: dict[str, list[_Block]] = {field: [] for field in _BLOCK_FIELDS}
        for b, indices in picked.items():
            block = _take(blocks[b], indices)
            by_field[_BLOCK_FIELDS_BY_TYPE[type(block)]].append(block)
        named = {(b.name, "weight" if isinstance(b, wire.WeightChanges) else b.kind)
                 for field, found in by_field.items() if field != "scalars" for b in found
                 if not isinstance(b, wire.Scalars)}  # fmt: skip
        update = {
            "batch_id": uuid.uuid4().hex,
            # each TensorInfo goes with the first half holding rows of its tensor
            "tensors": [infos.pop(key) for key in list(infos) if key in named],
            "models": batch.models if half == 0 else [],
            "nonfinite": batch.nonfinite if half == 0 else [],
            **by_field,
        }
        halves.append(batch.model_copy(update=update))
    return halves


def count_records(batch: wire.Batch) -> int:
    """Rows (one tensor or scalar at one step, in one block) and model trees in `batch`."""
    return sum(len(b.steps) for field in _BLOCK_FIELDS for b in getattr(batch, field)) + len(
        batch.models
    )


def _take(block: _Block, rows: list[int]) -> _Block:
    """`block` restricted to the rows at indices `rows`."""
    fields = block.model_dump(mode="json")  # packed bytes as base64, as they came in
    columns = {k: [v[i] for i in rows] for k, v in fields.items() if isinstance(v, list)}
    return type(block).model_validate({**fields, **columns})


def _validate(on_invalid: OnInvalid, model: type[_M], **fields: Any) -> _M | None:
    try:
        return model(**fields)
    except pydantic.ValidationError as exc:
        on_invalid(model.__name__, exc)
        return None


def _to_host(tensors: list[torch.Tensor]) -> _Host:
    """Values of `tensors`, keyed by `id(tensor)`, read with one copy per device."""
    if not tensors:
        return {}
    import torch

    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for tensor in tensors:
        by_device.setdefault(tensor.device, []).append(tensor)
    host: _Host = {}
    for device, group in by_device.items():
        if device.type == "cpu":  # no copy to make: one C call per tensor, no float64 cast
            for tensor in group:
                host[id(tensor)] = tensor.reshape(-1).tolist()
            continue
        dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        flat = torch.cat([t.detach().reshape(-1).to(dtype) for t in group])  # (sum of numel,)
        values: list[float] = flat.tolist()
        start = 0
        for tensor in group:
            host[id(tensor)] = values[start : start + tensor.numel()]
            start += tensor.numel()
    return host
