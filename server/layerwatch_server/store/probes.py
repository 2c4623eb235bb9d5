"""Probes: the model's outputs on the fixed probe inputs, one row per probe and layer.

A probe may arrive in parts (a client splits one the server answered 413 to):
the first part creates the probe, later parts add layers. Every write is
idempotent: a part sent again with the same content stores nothing new, and
one that contradicts what is stored is refused whole, so a stored probe never
changes.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import cast

from sqlalchemy import Table, select
from sqlalchemy.orm import Session

from layerwatch import wire
from layerwatch_server.db import insert_ignoring_duplicates
from layerwatch_server.errors import Conflict, ProbeNotFound
from layerwatch_server.models import (
    SqlProbe,
    SqlProbeAttributions,
    SqlProbeLayer,
    utcnow,
)
from layerwatch_server.schemas import (
    ProbeLayerSummary,
    ProbeSkippedPublic,
    ProbesPublic,
    ProbeSummary,
)
from layerwatch_server.store import codec
from layerwatch_server.store.runs import require_run, touch_run

_PROBES: Table = SqlProbe.__table__  # type: ignore[assignment]


def ingest_probe(session: Session, run_id: str, probe: wire.Probe) -> wire.ProbeReceipt:
    """Store ``probe`` (or one part of it) for run ``run_id`` in the session's transaction."""
    require_run(session, run_id)
    touch_run(session, run_id)
    where = f"probe at step {probe.step} (rank {probe.rank})"
    key = (run_id, probe.step, probe.rank)
    # Create the probe row unless it exists, then lock it: parts of one probe
    # arriving at once wait here for each other.
    session.execute(
        insert_ignoring_duplicates(session, _PROBES),
        {"run_id": run_id, "step": probe.step, "rank": probe.rank, "samples": probe.samples,
         "received_at": utcnow()},
    )  # fmt: skip
    stored = session.get(SqlProbe, key, with_for_update=True, populate_existing=True)
    assert stored is not None
    if stored.samples != probe.samples:
        raise Conflict(f"{where} is stored with {stored.samples} samples, not {probe.samples}")
    for field in ("labels", "predictions"):
        new, old = getattr(probe, field), getattr(stored, field)
        if new is not None and old is not None and bytes(old) != new:
            raise Conflict(f"{where}: `{field}` differ from the ones stored")
        if new is not None and old is None:
            setattr(stored, field, new)
    if probe.skipped:  # carried by the first part, as the labels are
        skipped = [s.model_dump() for s in probe.skipped]
        if stored.skipped is None:
            stored.skipped = skipped
        elif stored.skipped != skipped:
            raise Conflict(f"{where}: `skipped` differs from the one stored")
    if probe.attributions is not None:
        _store_attributions(session, key, probe.attributions, where)
    session.flush()

    existing = {
        layer.name: layer
        for layer in session.scalars(
            select(SqlProbeLayer).where(
                SqlProbeLayer.run_id == run_id,
                SqlProbeLayer.step == probe.step,
                SqlProbeLayer.rank == probe.rank,
                SqlProbeLayer.name.in_([layer.name for layer in probe.layers]),
            )
        )
    }
    position = _next_position(session, key)
    added = 0
    for layer in probe.layers:
        row = _layer_row(layer)
        old_layer = existing.get(layer.name)
        if old_layer is not None:
            if any(_differs(getattr(old_layer, field), value) for field, value in row.items()):
                raise Conflict(f"{where}: layer `{layer.name}` is stored with other values")
            continue
        session.add(
            SqlProbeLayer(run_id=run_id, step=probe.step, rank=probe.rank, position=position, **row)
        )
        position += 1
        added += 1
    session.flush()
    return wire.ProbeReceipt(step=probe.step, layers=added)


def _store_attributions(
    session: Session, key: tuple[str, int, int], attributions: wire.ProbeAttributions, where: str
) -> None:
    row = {
        "method": attributions.method,
        "shape": list(attributions.shape),
        "values": attributions.values,
        "targets": attributions.targets,
        "steps": attributions.steps,
        "deltas": None if attributions.deltas is None else codec.pack_float64(attributions.deltas),
    }
    stored = session.get(SqlProbeAttributions, key)
    if stored is None:
        session.add(SqlProbeAttributions(run_id=key[0], step=key[1], rank=key[2], **row))
    elif any(_differs(getattr(stored, field), value) for field, value in row.items()):
        raise Conflict(f"{where}: attributions differ from the ones stored")


def _layer_row(layer: wire.ProbeLayer) -> dict[str, object]:
    return {
        "name": layer.name,
        "features_shape": list(layer.features_shape),
        "features": layer.features,
        "source_shape": None if layer.source_shape is None else list(layer.source_shape),
        "reduced": layer.reduced,
        "maps_shape": None if layer.maps_shape is None else list(layer.maps_shape),
        "maps": layer.maps,
    }


def _differs(old: object, new: object) -> bool:
    if isinstance(old, memoryview):
        old = bytes(old)
    return old != new


def _next_position(session: Session, key: tuple[str, int, int]) -> int:
    positions = session.scalars(
        select(SqlProbeLayer.position).where(
            SqlProbeLayer.run_id == key[0],
            SqlProbeLayer.step == key[1],
            SqlProbeLayer.rank == key[2],
        )
    ).all()
    return max(positions, default=-1) + 1


def require_probe(
    session: Session,
    run_id: str,
    step: int,
    *,
    rank: int = 0,
    layers: Collection[str] | None = None,
) -> tuple[SqlProbe, list[SqlProbeLayer]]:
    """The probe at ``step`` and those of its layers in ``layers`` (all when None), in order.

    Raises `RunNotFound` or `ProbeNotFound` naming what is missing: the run, the
    probe, or the first of ``layers`` that the probe does not have.
    """
    require_run(session, run_id)
    probe = session.get(SqlProbe, (run_id, step, rank))
    if probe is None:
        raise ProbeNotFound(f"run `{run_id}` has no probe at step {step} (rank {rank})")
    query = select(SqlProbeLayer).where(
        SqlProbeLayer.run_id == run_id, SqlProbeLayer.step == step, SqlProbeLayer.rank == rank
    )
    if layers is not None:
        query = query.where(SqlProbeLayer.name.in_(layers))
    stored = list(session.scalars(query.order_by(SqlProbeLayer.position)))
    found = {layer.name for layer in stored}
    missing = [name for name in layers or () if name not in found]
    if missing:
        skipped = [wire.ProbeSkipped.model_validate(s) for s in probe.skipped or ()]
        raise ProbeNotFound(
            f"the probe at step {step} has no layer `{missing[0]}`"
            + left_out_because(skipped, missing[0])
        )
    return probe, stored


def left_out_because(
    skipped: Collection[wire.ProbeSkipped | ProbeSkippedPublic], layer: str
) -> str:
    """`": the client left it out: <reason>"` when `layer` is among `skipped`, else ``""``:
    what a message about a missing probe layer ends with."""
    reason = next((s.reason for s in skipped if s.name == layer), None)
    return "" if reason is None else f": the client left it out: {reason}"


def list_probes(session: Session, run_id: str, *, rank: int = 0) -> ProbesPublic:
    """The probes of a run, by step, with their layers' shapes (no values) and the layers
    the client left out, with the reason for each."""
    require_run(session, run_id)
    probes = session.scalars(
        select(SqlProbe)
        .where(SqlProbe.run_id == run_id, SqlProbe.rank == rank)
        .order_by(SqlProbe.step)
    ).all()
    layers: dict[int, list[ProbeLayerSummary]] = {probe.step: [] for probe in probes}
    rows = session.execute(
        select(
            SqlProbeLayer.step,
            SqlProbeLayer.name,
            SqlProbeLayer.features_shape,
            SqlProbeLayer.source_shape,
            SqlProbeLayer.reduced,
            SqlProbeLayer.maps_shape,
        )
        .where(SqlProbeLayer.run_id == run_id, SqlProbeLayer.rank == rank)
        .order_by(SqlProbeLayer.step, SqlProbeLayer.position)
    )
    for step, name, features_shape, source_shape, reduced, maps_shape in rows:
        layers[step].append(
            ProbeLayerSummary(
                name=name,
                features_shape=features_shape,
                source_shape=source_shape,
                reduced=reduced,
                maps_shape=maps_shape,
            )
        )
    explained: dict[int, list[int]] = {
        step: shape
        for step, shape in session.execute(
            select(SqlProbeAttributions.step, SqlProbeAttributions.shape).where(
                SqlProbeAttributions.run_id == run_id, SqlProbeAttributions.rank == rank
            )
        )
    }
    data = [
        ProbeSummary(
            step=probe.step,
            rank=probe.rank,
            samples=probe.samples,
            labels=probe.labels is not None,
            predictions=probe.predictions is not None,
            layers=layers[probe.step],
            attributions=explained.get(probe.step),
            skipped=[ProbeSkippedPublic.model_validate(s) for s in probe.skipped or ()],
        )
        for probe in probes
    ]
    return ProbesPublic(data=data, count=len(data))


def get_probe(
    session: Session,
    run_id: str,
    step: int,
    *,
    rank: int = 0,
    layers: list[str] | None = None,
) -> wire.Probe:
    """A stored probe with its values, in the wire format it came in; ``layers`` picks some."""
    probe, stored = require_probe(session, run_id, step, rank=rank, layers=layers or None)
    explained = session.get(SqlProbeAttributions, (run_id, step, rank))
    return wire.Probe.model_construct(
        step=probe.step,
        rank=probe.rank,
        samples=probe.samples,
        labels=_bytes(probe.labels),
        predictions=_bytes(probe.predictions),
        attributions=None if explained is None else _attributions(explained),
        skipped=[wire.ProbeSkipped.model_validate(s) for s in probe.skipped or ()],
        layers=[
            wire.ProbeLayer.model_construct(
                name=layer.name,
                features_shape=layer.features_shape,
                features=bytes(layer.features),
                source_shape=layer.source_shape,
                reduced=cast(wire.Reduction, layer.reduced),
                maps_shape=layer.maps_shape,
                maps=_bytes(layer.maps),
            )
            for layer in stored
        ],
    )


def _attributions(row: SqlProbeAttributions) -> wire.ProbeAttributions:
    deltas = None if row.deltas is None else codec.unpack_float64(row.deltas).tolist()
    return wire.ProbeAttributions.model_construct(
        method="integrated_gradients",
        shape=row.shape,
        values=bytes(row.values),
        targets=bytes(row.targets),
        steps=row.steps,
        deltas=deltas,
    )


def _bytes(value: bytes | memoryview | None) -> bytes | None:
    return None if value is None else bytes(value)
