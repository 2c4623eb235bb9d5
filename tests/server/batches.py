"""Builders of valid payloads for the server tests, ways to send them (through the store, or
over HTTP), and small readers of what was stored."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import uuid
from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from layerwatch import wire
from layerwatch_server import store
from layerwatch_server.models import (
    SqlBatch,
    SqlHistogram,
    SqlModule,
    SqlScalar,
    SqlStat,
    SqlTensor,
    SqlUnitMean,
    SqlWeightChange,
)


def new_id(prefix: str = "t") -> str:
    """A fresh identifier, valid as a run id, batch id or name."""
    return f"{prefix}{uuid.uuid4().hex}"


def stats_block(
    name: str,
    steps: Sequence[int],
    *,
    kind: wire.Kind = "activation",
    offset: float = 0.0,
    **columns: Sequence[float],
) -> dict[str, Any]:
    """A `wire.Stats` block as a dict; unset columns are made from the steps."""
    block: dict[str, Any] = {"name": name, "kind": kind, "steps": list(steps)}
    for stat in wire.STAT_NAMES:
        if stat in columns:
            block[stat] = list(columns[stat])
        elif stat in ("nonfinite", "numel"):
            block[stat] = [0 if stat == "nonfinite" else 64 for _ in steps]
        else:
            block[stat] = [offset + 0.5 * step + wire.STAT_NAMES.index(stat) for step in steps]
    return block


def histogram(
    name: str,
    step: int,
    counts: Sequence[int] | str,
    *,
    kind: wire.Kind = "activation",
    **bins: Any,
) -> dict[str, Any]:
    """A one-step `wire.Histograms` block as a dict; equal-width over [-1, 1] unless
    `edges`/`lo`/`hi` are given. A string for `counts` is sent packed, as it is."""
    if "edges" not in bins:
        bins.setdefault("lo", -1.0)
        bins.setdefault("hi", 1.0)
    counts = counts if isinstance(counts, str) else list(counts)
    return {
        "name": name,
        "kind": kind,
        "steps": [step],
        "counts": [counts],
        **{key: [value] for key, value in bins.items()},
    }


def scalars_block(
    name: str, steps: Sequence[int], values: Sequence[float], **extra: Any
) -> dict[str, Any]:
    return {"name": name, "steps": list(steps), "values": list(values), **extra}


def packed_floats(values: Sequence[float]) -> str:
    """Base64 of little-endian float32, as unit means travel."""
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


def unit_means_block(name: str, steps: Sequence[int], units: int = 4) -> dict[str, Any]:
    """A `wire.UnitMeans` block; unit u at step s has the mean s + u / 4."""
    values = [packed_floats([s + u / 4 for u in range(units)]) for s in steps]
    return {"name": name, "kind": "activation", "steps": list(steps), "values": values}


def weight_changes_block(name: str, steps: Sequence[int]) -> dict[str, Any]:
    """A `wire.WeightChanges` block: NaN since the previous capture at the first step."""
    return {
        "name": name,
        "steps": list(steps),
        "since_prev": [float("nan") if i == 0 else 0.1 / (1 + s) for i, s in enumerate(steps)],
        "since_init": [0.01 * s for s in steps],
        "update_ratio": [1e-3 for _ in steps],
    }


def model_tree(name: str = "Net") -> dict[str, Any]:
    """A `wire.ModelTree`: a model with one Linear layer and a ReLU."""
    return {
        "name": name,
        "modules": [
            {"path": "", "type": name, "params": 0, "trainable": 0,
             "inputs": [[8, 4]], "outputs": [[8, 16]]},
            {"path": "fc1", "type": "Linear", "params": 80, "trainable": 80,
             "inputs": [[8, 4]], "outputs": [[8, 16]]},
            {"path": "act", "type": "ReLU", "params": 0, "trainable": 0},
        ],
    }  # fmt: skip


def make_batch(
    *,
    batch_id: str | None = None,
    stats: Sequence[dict[str, Any]] = (),
    histograms: Sequence[dict[str, Any]] = (),
    scalars: Sequence[dict[str, Any]] = (),
    tensors: Sequence[dict[str, Any]] = (),
    unit_means: Sequence[dict[str, Any]] = (),
    weight_changes: Sequence[dict[str, Any]] = (),
    models: Sequence[dict[str, Any]] = (),
    rank: int = 0,
) -> wire.Batch:
    return wire.Batch.model_validate(
        {
            "batch_id": batch_id or new_id("b"),
            "rank": rank,
            "tensors": list(tensors),
            "stats": list(stats),
            "histograms": list(histograms),
            "scalars": list(scalars),
            "unit_means": list(unit_means),
            "weight_changes": list(weight_changes),
            "models": list(models),
        }
    )


def sample_batch(*, batch_id: str | None = None, steps: Sequence[int] = (0, 1, 2)) -> wire.Batch:
    """A batch with a bit of everything: stats of two tensors, a histogram, a scalar,
    unit means, weight changes and a model tree."""
    return make_batch(
        batch_id=batch_id,
        tensors=[{"name": "fc1", "kind": "activation", "module_type": "Linear", "shape": [8, 16]}],
        stats=[stats_block("fc1", steps), stats_block("fc1.weight", steps, kind="weight")],
        histograms=[histogram("fc1", steps[0], [1, 2, 3, 4])],
        scalars=[scalars_block("loss", steps, [1.0 / (1 + s) for s in steps])],
        unit_means=[unit_means_block("fc1", steps)],
        weight_changes=[weight_changes_block("fc1.weight", steps)],
        models=[model_tree()],
    )


def body(batch: wire.Batch) -> bytes:
    """The JSON a client sends for ``batch``."""
    return batch.model_dump_json().encode()


def digest(batch: wire.Batch) -> str:
    """The content digest the ingest route computes for ``batch`` sent as `body`."""
    return hashlib.sha256(body(batch)).hexdigest()


def count_rows(session: Session, run_id: str) -> dict[str, int]:
    """Rows per table that belong to run ``run_id``."""
    tensors = select(SqlTensor.id).where(SqlTensor.run_id == run_id)

    def count(model: Any, condition: Any) -> int:
        return session.scalar(select(func.count()).select_from(model).where(condition)) or 0

    return {
        "tensors": count(SqlTensor, SqlTensor.run_id == run_id),
        "stats": count(SqlStat, SqlStat.tensor_id.in_(tensors)),
        "histograms": count(SqlHistogram, SqlHistogram.tensor_id.in_(tensors)),
        "scalars": count(SqlScalar, SqlScalar.run_id == run_id),
        "unit_means": count(SqlUnitMean, SqlUnitMean.tensor_id.in_(tensors)),
        "weight_changes": count(SqlWeightChange, SqlWeightChange.tensor_id.in_(tensors)),
        "modules": count(SqlModule, SqlModule.run_id == run_id),
        "batches": count(SqlBatch, SqlBatch.run_id == run_id),
    }


def create_run(api: httpx.Client, **spec: object) -> str:
    """Create a run over HTTP (a new id and project unless given); its id."""
    spec.setdefault("id", new_id("r"))
    spec.setdefault("project", new_id("p"))
    response = api.post("/runs", json=spec)
    assert response.status_code == 201, response.text
    run_id: str = response.json()["id"]
    return run_id


def post_batch(
    api: httpx.Client, run_id: str, batch: wire.Batch, **kwargs: object
) -> httpx.Response:
    return api.post(
        f"/runs/{run_id}/batches",
        content=body(batch),
        headers={"Content-Type": "application/json"},
        **kwargs,  # type: ignore[arg-type]
    )


Doc = dict[str, Any]


def valid_doc() -> Doc:
    """A valid batch as the JSON document a client would send."""
    doc: Doc = json.loads(sample_batch().model_dump_json())
    doc["histograms"].append(histogram("fc1", 1, [1, 2, 3], edges=[0.0, 1.0, 2.0, 3.0]))
    doc["scalars"][0]["times"] = [1.0, 2.0, 3.0]
    return doc


def assert_nothing_stored(api: httpx.Client, run_id: str) -> None:
    assert api.get(f"/runs/{run_id}/tensors").json()["count"] == 0
    assert api.get(f"/runs/{run_id}/scalars").json()["count"] == 0


def store_run(session: Session, *, project: str | None = None, **spec: object) -> str:
    """Create a run through the store, committed; its id."""
    run, created = store.create_or_resume_run(
        session, wire.RunCreate(id=new_id("r"), project=project or new_id("p"), **spec)
    )
    session.commit()
    assert created
    return run.id


def store_batch(session: Session, run_id: str, batch: wire.Batch) -> wire.BatchReceipt:
    """One unit of work, as the server runs it: commit on success, roll back on error."""
    try:
        receipt = store.ingest_batch(session, run_id, batch, digest=digest(batch))
    except BaseException:
        session.rollback()
        raise
    session.commit()
    return receipt


def same_floats(left: list[float], right: list[float]) -> bool:
    """Equal element by element, NaN equal to NaN."""
    return np.array_equal(np.asarray(left), np.asarray(right), equal_nan=True)
