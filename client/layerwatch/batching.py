"""Records to batches: `build_batch()` turns records into one columnar `wire.Batch`,
reading all their tensors back with one device-to-host copy; `split_batch()` halves
a batch the server found too large.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import pydantic

from layerwatch import wire

if TYPE_CHECKING:
    import torch

from layerwatch.buffer import ScalarRecord, StatRecord, TensorKey, TensorMeta

__all__ = ["build_batch", "count_records", "split_batch"]


# -- records -> batches -------------------------------------------------------------

_M = TypeVar("_M", bound=pydantic.BaseModel)
OnInvalid = Callable[[str, pydantic.ValidationError], None]


def build_batch(
    records: list[StatRecord | ScalarRecord],
    *,
    rank: int,
    tensors: Mapping[TensorKey, TensorMeta],
    described: set[TensorKey],
    on_invalid: OnInvalid,
) -> tuple[wire.Batch | None, int]:
    """One batch of `records` in columnar blocks, and the number of records it holds.

    A later record of one (name, kind, step) replaces an earlier one; a block that
    does not validate (a bad scalar name, say) is left out and reported to
    `on_invalid`. `TensorInfo` goes along for the tensors not in `described`, which
    is updated. The batch is None when no record is left.
    """
    stats: dict[TensorKey, dict[int, StatRecord]] = {}
    scalars: dict[str, dict[int, ScalarRecord]] = {}
    device_values: list[torch.Tensor] = []
    for record in records:
        if isinstance(record, StatRecord):
            stats.setdefault((record.name, record.kind), {})[record.step] = record
            device_values.append(record.stats)
        else:
            scalars.setdefault(record.name, {})[record.step] = record
            if not isinstance(record.value, (int, float)):
                device_values.append(record.value)
    host = _to_host(device_values)  # the one device-to-host copy (per device)
    kept = 0
    stat_blocks: list[wire.Stats] = []
    for (name, kind), by_step in stats.items():
        steps = sorted(by_step)
        rows = [(by_step[s], host[id(by_step[s].stats)]) for s in steps]
        columns: dict[str, list[float] | list[int]] = {
            stat: [values[i] for _, values in rows] for i, stat in enumerate(wire.STAT_NAMES)
        }
        # Counts come exact from the host (numel) or clamped (float32 nonfinite).
        columns["numel"] = [record.numel for record, _ in rows]
        columns["nonfinite"] = [
            min(max(round(values[-2]), 0), record.numel) for record, values in rows
        ]
        block = _validate(on_invalid, wire.Stats, name=name, kind=kind, steps=steps, **columns)
        if block is not None:
            stat_blocks.append(block)
            kept += len(steps)
    scalar_blocks: list[wire.Scalars] = []
    for name, by_step_scalar in scalars.items():
        steps = sorted(by_step_scalar)
        points = [by_step_scalar[s] for s in steps]
        values = [
            float(p.value) if isinstance(p.value, (int, float)) else host[id(p.value)][0]
            for p in points
        ]
        times = [p.time for p in points]
        scalar_block = _validate(
            on_invalid, wire.Scalars, name=name, steps=steps, values=values, times=times
        )
        if scalar_block is not None:
            scalar_blocks.append(scalar_block)
            kept += len(steps)
    if not kept:
        return None, 0
    infos = []
    for block in stat_blocks:
        key = (block.name, block.kind)
        if key not in described and key in tensors:
            module_type, shape, dtype = tensors[key]
            info = _validate(
                on_invalid, wire.TensorInfo, name=block.name, kind=block.kind,
                module_type=module_type, shape=list(shape), dtype=dtype,
            )  # fmt: skip
            if info is not None:
                infos.append(info)
                described.add(key)
    batch = wire.Batch(
        batch_id=uuid.uuid4().hex, rank=rank, tensors=infos,
        stats=stat_blocks, scalars=scalar_blocks,
    )  # fmt: skip
    return batch, kept


def split_batch(batch: wire.Batch) -> list[wire.Batch]:
    """`batch` as two batches of half the records each, with fresh batch ids."""
    blocks: list[wire.Stats | wire.Scalars] = [*batch.stats, *batch.scalars]
    rows = [(b, i) for b, block in enumerate(blocks) for i in range(len(block.steps))]
    infos = {(info.name, info.kind): info for info in batch.tensors}
    halves = []
    for part in (rows[: len(rows) // 2], rows[len(rows) // 2 :]):
        picked: dict[int, list[int]] = {}
        for b, i in part:
            picked.setdefault(b, []).append(i)
        kept = [_take(blocks[b], indices) for b, indices in picked.items()]
        stats = [block for block in kept if isinstance(block, wire.Stats)]
        update = {
            "batch_id": uuid.uuid4().hex,
            # each TensorInfo goes with the first half holding statistics of its tensor
            "tensors": [t for s in stats if (t := infos.pop((s.name, s.kind), None))],
            "stats": stats,
            "scalars": [block for block in kept if isinstance(block, wire.Scalars)],
        }
        halves.append(batch.model_copy(update=update))
    return halves


def count_records(batch: wire.Batch) -> int:
    """Rows (one tensor or scalar at one step) in `batch`."""
    return sum(len(b.steps) for b in batch.stats) + sum(len(b.steps) for b in batch.scalars)


def _take(block: wire.Stats | wire.Scalars, rows: list[int]) -> wire.Stats | wire.Scalars:
    """`block` restricted to the rows at indices `rows`."""
    fields = block.model_dump()
    columns = {k: [v[i] for i in rows] for k, v in fields.items() if isinstance(v, list)}
    return type(block).model_validate({**fields, **columns})


def _validate(on_invalid: OnInvalid, model: type[_M], **fields: Any) -> _M | None:
    try:
        return model(**fields)
    except pydantic.ValidationError as exc:
        on_invalid(model.__name__, exc)
        return None


def _to_host(tensors: list[torch.Tensor]) -> dict[int, list[float]]:
    """Values of `tensors`, keyed by `id(tensor)`, read with one copy per device."""
    if not tensors:
        return {}
    import torch

    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for tensor in tensors:
        by_device.setdefault(tensor.device, []).append(tensor)
    host: dict[int, list[float]] = {}
    for device, group in by_device.items():
        dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        flat = torch.cat([t.detach().reshape(-1).to(dtype) for t in group])  # (sum of numel,)
        values: list[float] = flat.tolist()
        start = 0
        for tensor in group:
            host[id(tensor)] = values[start : start + tensor.numel()]
            start += tensor.numel()
    return host
