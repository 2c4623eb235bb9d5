"""Where measurements wait between the training thread and the server.

`Buffer` is the bounded queue the training thread puts records on: a put never
blocks, and a record that finds the queue full is dropped and counted.
`build_batch()` turns records into one columnar `wire.Batch`, reading all their
tensors back with one device-to-host copy. `MemorySpool` holds batches the server
has not yet taken, within a bound; a durable spool on disk can replace it by
implementing `Spool`.
"""

from __future__ import annotations

import queue
import threading
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar

import pydantic

from layerwatch import wire

if TYPE_CHECKING:
    import torch

__all__ = [
    "Buffer",
    "FlushRequest",
    "Item",
    "MemorySpool",
    "Outgoing",
    "ScalarRecord",
    "Spool",
    "StatRecord",
    "TensorMeta",
    "Wake",
    "build_batch",
    "count_records",
    "split_batch",
]

TensorMeta = tuple[str, tuple[int, ...], str]
"""What hooks note about a tensor at its first capture: module type, shape, dtype."""

TensorKey = tuple[str, wire.Kind]


class StatRecord(NamedTuple):
    """Statistics of one tensor at one step, still on the device that computed them."""

    step: int
    name: str
    kind: wire.Kind
    stats: torch.Tensor  # (NUM_STATS,) float32, order of wire.STAT_NAMES
    numel: int  # exact; the float32 copy in `stats` rounds above 2**24


class ScalarRecord(NamedTuple):
    """One user-logged value; a tensor value is read back on the sender thread."""

    step: int
    name: str
    value: float | torch.Tensor
    time: float


@dataclass(eq=False)
class FlushRequest:
    """Put on the queue by `flush()`; done once every record ahead of it is settled."""

    done: threading.Event = field(default_factory=threading.Event)
    upto: int = -1  # set by the sender: sequence number of the last batch sealed before it


class Wake:
    """Put on the queue to wake the sender early (e.g. to stop)."""


Item = StatRecord | ScalarRecord | FlushRequest | Wake


class Buffer:
    """Bounded queue from the training thread to the sender; `put` never blocks."""

    def __init__(self, maxsize: int) -> None:
        self._queue: queue.Queue[Item] = queue.Queue(maxsize)
        self._dropped = 0
        self._lock = threading.Lock()

    @property
    def maxsize(self) -> int:
        return self._queue.maxsize

    @property
    def dropped(self) -> int:
        """Records dropped because the queue was full."""
        return self._dropped

    def put(self, record: StatRecord | ScalarRecord) -> bool:
        """Queue `record`, or drop and count it when the queue is full."""
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            with self._lock:  # hooks may run on several threads (nn.DataParallel)
                self._dropped += 1
            return False
        return True

    def put_control(self, item: FlushRequest | Wake, timeout: float | None) -> bool:
        """Queue a control item, waiting up to `timeout` seconds for room (never from hooks)."""
        try:
            self._queue.put(item, timeout=timeout if timeout is None else max(timeout, 0.0))
        except queue.Full:
            return False
        return True

    def get(self, timeout: float) -> Item | None:
        """Take the next item, waiting up to `timeout` seconds; None when there is none."""
        try:
            if timeout <= 0:
                return self._queue.get_nowait()
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None


@dataclass(eq=False)
class Outgoing:
    """A built batch waiting for the server, with what is needed to account for it."""

    seq: int  # order of sealing; the halves of a split batch keep their parent's
    batch: wire.Batch
    records: int
    body: bytes | None = None  # JSON, cached so a retry sends the same bytes


class Spool(Protocol):
    """Storage of batches not yet taken by the server, oldest first."""

    def __len__(self) -> int: ...

    def push(self, outgoing: Outgoing) -> list[Outgoing]:
        """Add `outgoing` last; return the batches evicted to stay within bounds."""
        ...

    def push_front(self, batches: list[Outgoing]) -> None:
        """Put `batches` first, in order (the halves of a split batch)."""
        ...

    def peek(self) -> Outgoing | None:
        """The oldest batch, left in place; None when empty."""
        ...

    def pop(self) -> Outgoing:
        """Remove and return the oldest batch (after it was sent or given up)."""
        ...


class MemorySpool:
    """A `Spool` in memory holding at most `max_records` records, dropping the oldest."""

    def __init__(self, max_records: int) -> None:
        self._max_records = max_records
        self._batches: deque[Outgoing] = deque()
        self._records = 0

    def __len__(self) -> int:
        return len(self._batches)

    def push(self, outgoing: Outgoing) -> list[Outgoing]:
        self._batches.append(outgoing)
        self._records += outgoing.records
        evicted: list[Outgoing] = []
        while self._records > self._max_records and len(self._batches) > 1:
            evicted.append(self.pop())
        return evicted

    def push_front(self, batches: list[Outgoing]) -> None:
        for outgoing in reversed(batches):
            self._batches.appendleft(outgoing)
            self._records += outgoing.records

    def peek(self) -> Outgoing | None:
        return self._batches[0] if self._batches else None

    def pop(self) -> Outgoing:
        outgoing = self._batches.popleft()
        self._records -= outgoing.records
        return outgoing


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
