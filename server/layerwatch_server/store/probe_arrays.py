"""Stored probes as NumPy arrays, for the views that compute on them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from layerwatch_server.models import SqlProbe, SqlProbeAttributions
from layerwatch_server.store import codec
from layerwatch_server.store.probes import require_probe
from layerwatch_server.store.runs import require_run


@dataclass
class LayerArrays:
    """One probed layer: `features` (samples, ...) float32 and conv `maps`, if sent."""

    name: str
    features: np.ndarray
    source_shape: list[int] | None
    reduced: str
    maps: np.ndarray | None = None


@dataclass
class ProbeArrays:
    """A probe at one step; `layers` in network order, as many as asked for."""

    step: int
    samples: int
    labels: np.ndarray | None  # (samples,) int64
    predictions: np.ndarray | None  # (samples,) int64
    layers: dict[str, LayerArrays] = field(default_factory=dict)
    attributions: np.ndarray | None = None  # (n, *input shape) float32
    attribution_targets: np.ndarray | None = None  # (n,) int64
    attribution_deltas: np.ndarray | None = None  # (n,) float64, when the client sent them


def probe_steps(session: Session, run_id: str, *, rank: int = 0) -> list[int]:
    """The steps at which the run was probed, in order; raises if the run does not exist."""
    require_run(session, run_id)
    return list(
        session.scalars(
            select(SqlProbe.step)
            .where(SqlProbe.run_id == run_id, SqlProbe.rank == rank)
            .order_by(SqlProbe.step)
        )
    )


def load_probe(
    session: Session,
    run_id: str,
    step: int,
    *,
    rank: int = 0,
    layers: list[str] | None = None,
    maps: bool = False,
    attributions: bool = False,
) -> ProbeArrays:
    """The probe at `step` with the `layers` asked for (all when None), decoded.

    Raises `RunNotFound` or `ProbeNotFound` naming what is missing: the run, the
    probe or a layer.
    """
    probe, rows = require_probe(session, run_id, step, rank=rank, layers=layers)
    result = ProbeArrays(
        step=step,
        samples=probe.samples,
        labels=_ints(probe.labels),
        predictions=_ints(probe.predictions),
    )
    for row in rows:
        features = codec.unpack_float16(row.features, row.features_shape)
        feature_maps = None
        if maps and row.maps is not None and row.maps_shape is not None:
            feature_maps = codec.unpack_float16(row.maps, row.maps_shape)
        result.layers[row.name] = LayerArrays(
            row.name, features, row.source_shape, row.reduced, feature_maps
        )
    if attributions:
        explained = session.get(SqlProbeAttributions, (run_id, step, rank))
        if explained is not None:
            result.attributions = codec.unpack_float32(explained.values, explained.shape)
            result.attribution_targets = _ints(explained.targets)
            if explained.deltas is not None:
                result.attribution_deltas = codec.unpack_float64(explained.deltas)
    return result


def _ints(data: bytes | None) -> np.ndarray | None:
    return None if data is None else codec.unpack_int32(data)
