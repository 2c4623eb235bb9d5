"""The client's and the server's codecs read the same bytes the same way: what the
client packs for the wire, the server stores and decodes as the client does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from layerwatch import codec as client
from layerwatch import wire
from layerwatch.capture.selection import select_leaves
from layerwatch.delivery.batching import build_batch
from layerwatch.probe.capture import ProbeSet, run_probe
from layerwatch.records import SummaryRecord
from layerwatch.reduce.statistics import Summarizer
from layerwatch_server.store import codec as server


def _batch(x: torch.Tensor, *, units: int | None) -> wire.Batch:
    summary = Summarizer(bins=16).summarize(x, units=units, sync=True)
    record = SummaryRecord(0, "fc", "activation", x.numel(), summary)
    batch, _ = build_batch(
        [record], rank=0, tensors={("fc", "activation"): ("Linear", tuple(x.shape), "float32")},
        described=set(), on_invalid=lambda model, exc: None,
    )  # fmt: skip
    assert batch is not None
    return batch


@pytest.mark.parametrize("scale", [1.0, 1e30, 1e-30])
def test_histogram_counts(scale: float) -> None:
    torch.manual_seed(0)
    x = torch.randn(256, 8) * scale
    [histograms] = _batch(x, units=None).histograms
    [counts] = histograms.counts
    assert isinstance(counts, bytes)
    [stored], _, _ = server.pack_histograms([counts], [-1.0], [1.0])  # as ingest stores them
    np.testing.assert_array_equal(
        server.unpack_histogram_counts([stored], [16])[0], client.unpack_counts(counts)
    )
    assert int(client.unpack_counts(counts).sum()) == x.numel()


def test_unit_means() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 12)
    [means] = _batch(x, units=1).unit_means
    [packed] = means.values
    np.testing.assert_array_equal(server.unpack_unit_means(packed), client.unpack_float32(packed))
    np.testing.assert_allclose(client.unpack_float32(packed), x.mean(0).numpy(), rtol=1e-5)


def test_probe_features_maps_and_labels() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    inputs, labels = torch.randn(10, 1, 4, 4), torch.arange(10) % 3
    [probe] = run_probe(model, ProbeSet(inputs, labels), select_leaves(model), step=0)
    assert probe.labels is not None
    assert probe.predictions is not None
    for packed in (probe.labels, probe.predictions):
        np.testing.assert_array_equal(server.unpack_int32(packed), client.unpack_int32(packed))
    np.testing.assert_array_equal(client.unpack_int32(probe.labels), labels.numpy())
    for layer in probe.layers:
        shape = layer.features_shape
        np.testing.assert_array_equal(
            server.unpack_float16(layer.features, shape),
            client.unpack_float16(layer.features, shape),
        )
        if layer.maps is not None and layer.maps_shape is not None:
            np.testing.assert_array_equal(
                server.unpack_float16(layer.maps, layer.maps_shape),
                client.unpack_float16(layer.maps, layer.maps_shape),
            )


def test_float32_the_server_packs() -> None:
    values = np.array([[0.5, -np.inf], [np.nan, 3e38]], dtype=np.float64)
    packed = server.pack_float32(values)
    np.testing.assert_array_equal(client.unpack_float32(packed, [2, 2]), values.astype(np.float32))
    np.testing.assert_array_equal(server.unpack_float32(packed, [2, 2]), values.astype(np.float32))
