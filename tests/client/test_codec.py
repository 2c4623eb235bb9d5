"""The client's decoders of the wire's packed arrays, against what the client packs."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch

from layerwatch import wire
from layerwatch.codec import unpack_counts, unpack_float16, unpack_float32, unpack_int32
from layerwatch.delivery.batching import build_batch
from layerwatch.probe.inputs import pack_int32
from layerwatch.records import SummaryRecord
from layerwatch.reduce.statistics import Summarizer


def test_int32_labels_round_trip() -> None:
    labels = torch.tensor([0, 9, -3, 2**31 - 1])
    packed = base64.b64decode(pack_int32(labels))
    assert unpack_int32(packed).tolist() == labels.tolist()


def test_float16_keeps_shape_and_non_finite_values() -> None:
    values = np.array([[0.5, -2.0, np.inf], [np.nan, 65504.0, -0.0]], dtype="<f2")
    decoded = unpack_float16(values.tobytes(), [2, 3])
    assert decoded.shape == (2, 3)
    np.testing.assert_array_equal(decoded, values.astype(np.float32))


def test_float32_flat_or_shaped() -> None:
    values = np.arange(6, dtype="<f4")
    assert unpack_float32(values.tobytes()).tolist() == values.tolist()
    assert unpack_float32(values.tobytes(), [3, 2]).shape == (3, 2)


@pytest.mark.parametrize("units", [None, 4])
def test_batches_the_client_builds_decode_to_its_measurements(units: int | None) -> None:
    torch.manual_seed(0)
    x = torch.randn(32, 4)
    summary = Summarizer(bins=8).summarize(x, units=1 if units else None, sync=True)
    record = SummaryRecord(3, "fc", "activation", x.numel(), summary)
    batch, kept = build_batch(
        [record], rank=0, tensors={("fc", "activation"): ("Linear", (32, 4), "float32")},
        described=set(), on_invalid=lambda model, exc: None,
    )  # fmt: skip
    assert batch is not None
    assert kept == record.rows
    [block] = batch.histograms
    assert summary.counts is not None
    counts = block.counts[0]
    raw = counts if isinstance(counts, bytes) else np.asarray(counts, dtype="<u4").tobytes()
    assert unpack_counts(raw).tolist() == summary.counts.tolist()
    assert int(unpack_counts(raw).sum()) == x.numel()
    if units:
        [means] = batch.unit_means
        assert isinstance(means, wire.UnitMeans)
        assert summary.units is not None
        np.testing.assert_allclose(unpack_float32(means.values[0]), summary.units.numpy())
