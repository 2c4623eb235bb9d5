from __future__ import annotations

import math

import pydantic
import torch

from layerwatch import wire
from layerwatch.delivery.batching import build_batch, count_records, split_batch
from layerwatch.records import Record, ScalarRecord, SummaryRecord, TensorMeta
from layerwatch.reduce.statistics import Summary, activation_stats


def test_build_batch_groups_columns_and_describes_tensors_once() -> None:
    records = [
        stat_record(1, "fc", [1.0, 2.0]),
        stat_record(0, "fc", [0.0, math.nan]),
        stat_record(0, "act", [3.0]),
        ScalarRecord(0, "loss", torch.tensor(0.5), 10.0),
        ScalarRecord(0, "loss", 0.75, 11.0),  # same step again: the later one stays
        ScalarRecord(2, "loss", 0.25, 12.0),
    ]
    described: set[tuple[str, wire.Kind]] = set()
    tensors = {("fc", "activation"): ("Linear", (2,), "float32")}
    batch, kept = build_batch(
        records, rank=3, tensors=tensors, described=described, on_invalid=_fail
    )
    assert batch is not None
    assert kept == 5
    assert batch.rank == 3
    fc = next(s for s in batch.stats if s.name == "fc")
    assert fc.steps == [0, 1]
    assert fc.mean == [0.0, 1.5]
    assert fc.nonfinite == [1, 0]
    assert fc.numel == [2, 2]
    assert fc.zero_frac == [0.5, 0.0]
    [loss] = batch.scalars
    assert (loss.steps, loss.values, loss.times) == ([0, 2], [0.75, 0.25], [11.0, 12.0])
    assert [t.name for t in batch.tensors] == ["fc"]
    assert described == {("fc", "activation")}
    again, _ = build_batch(
        records[:1], rank=0, tensors=tensors, described=described, on_invalid=_fail
    )
    assert again is not None
    assert again.tensors == []


def test_build_batch_leaves_out_invalid_blocks() -> None:
    invalid: list[str] = []
    records = [ScalarRecord(0, "bad\nname", 1.0, 0.0), ScalarRecord(0, "good", 2.0, 0.0)]
    batch, kept = build_batch(
        records, rank=0, tensors={}, described=set(),
        on_invalid=lambda model, exc: invalid.append(model),
    )  # fmt: skip
    assert kept == 1
    assert batch is not None
    assert [s.name for s in batch.scalars] == ["good"]
    assert invalid == ["Scalars"]
    nothing, kept = build_batch(
        records[:1], rank=0, tensors={}, described=set(), on_invalid=lambda m, e: None
    )
    assert nothing is None
    assert kept == 0


def test_split_batch_halves_rows_with_fresh_ids() -> None:
    records: list[Record] = [stat_record(s, "fc", [float(s)]) for s in range(6)]
    records.append(stat_record(0, "out", [1.0]))
    records += [ScalarRecord(s, "loss", float(s), 0.0) for s in range(4)]
    meta = ("Linear", (1,), "float32")
    tensors: dict[tuple[str, wire.Kind], TensorMeta] = {
        ("fc", "activation"): meta, ("out", "activation"): meta
    }  # fmt: skip
    batch, kept = build_batch(records, rank=0, tensors=tensors, described=set(), on_invalid=_fail)
    assert batch is not None
    assert count_records(batch) == kept == 11
    first, second = split_batch(batch)
    assert len({first.batch_id, second.batch_id, batch.batch_id}) == 3
    assert (count_records(first), count_records(second)) == (5, 6)
    assert [(s.name, s.steps) for s in first.stats] == [("fc", [0, 1, 2, 3, 4])]
    assert [(s.name, s.steps) for s in second.stats] == [("fc", [5]), ("out", [0])]
    assert first.scalars == []
    assert [s.steps for s in second.scalars] == [[0, 1, 2, 3]]
    assert [t.name for t in first.tensors] == ["fc"]  # each described once
    assert [t.name for t in second.tensors] == ["out"]
    assert second.stats[0].mean == [5.0]


def _fail(model: str, exc: pydantic.ValidationError) -> None:
    raise AssertionError(f"{model}: {exc}")


def stat_record(step: int, name: str, values: list[float]) -> SummaryRecord:
    summary = Summary(activation_stats(torch.tensor(values)), None, None, None)
    return SummaryRecord(step, name, "activation", len(values), summary)
