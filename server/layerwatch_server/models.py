"""The database schema as SQLAlchemy ORM classes.

Alembic (``migrations/``) creates and changes these tables; the server never
calls ``create_all``. Measurements are stored for volume: one wide row per
(tensor, step, rank) of statistics, histograms as packed binary counts, and
natural primary keys so that every insert is idempotent.

Non-finite values: PostgreSQL stores NaN natively, SQLite turns NaN into
NULL. A NULL in a measurement column therefore always means NaN.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Double,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from layerwatch.wire import STAT_NAMES

NAME = String(250)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class SqlProject(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(NAME, unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SqlRun(Base):
    __tablename__ = "runs"
    __table_args__ = (Index("ix_runs_project_id_started_at", "project_id", "started_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(NAME)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(16), default="running")
    host: Mapped[str | None] = mapped_column(NAME)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # When the run's process last spoke (data or a heartbeat): a running run silent for
    # longer than the run timeout is reported crashed.
    last_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Captures the client skipped because its reducer fell behind, as its last status
    # update reported them; None when none said.
    skipped_captures: Mapped[int | None] = mapped_column(BigInteger)


class SqlTensor(Base):
    """A watched tensor of a run: an activation, a weight or a gradient."""

    __tablename__ = "tensors"
    __table_args__ = (UniqueConstraint("run_id", "name", "kind"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(NAME)
    kind: Mapped[str] = mapped_column(String(16))
    module_type: Mapped[str | None] = mapped_column(NAME)
    shape: Mapped[list[int] | None] = mapped_column(JSON)
    dtype: Mapped[str | None] = mapped_column(String(32))
    # Steps per bucket of its statistics' level-1 rollup (see `SqlStatRollup`), fixed
    # from the spacing of its first steps; None until two steps are known.
    rollup_width: Mapped[int | None] = mapped_column(BigInteger)


class SqlStat(Base):
    """Summary statistics of one tensor at one step on one rank."""

    __tablename__ = "stats"
    __table_args__ = {"sqlite_with_rowid": False}

    tensor_id: Mapped[int] = mapped_column(
        ForeignKey("tensors.id", ondelete="CASCADE"), primary_key=True
    )
    step: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    rank: Mapped[int] = mapped_column(Integer, primary_key=True)
    mean: Mapped[float | None] = mapped_column(Double)
    std: Mapped[float | None] = mapped_column(Double)
    min: Mapped[float | None] = mapped_column(Double)
    max: Mapped[float | None] = mapped_column(Double)
    abs_mean: Mapped[float | None] = mapped_column(Double)
    l2: Mapped[float | None] = mapped_column(Double)
    zero_frac: Mapped[float | None] = mapped_column(Double)
    nonfinite: Mapped[int] = mapped_column(BigInteger)
    numel: Mapped[int] = mapped_column(BigInteger)


ROLLUP_FIELDS = ("lo", "lo_step", "hi", "hi_step", "nan_step")
"""Per statistic, per rollup bucket: the smallest and largest non-NaN value, the steps
where they are, and the first step whose value is NaN (each None when there is none)."""


def rollup_column(stat: str, field: str) -> str:
    return f"{stat}_{field}"


class SqlStatRollup(Base):
    """The envelope of one tensor's statistics over a bucket of steps, kept up at ingest.

    Level 1 buckets are ``rollup_width`` steps of the tensor wide (about
    `store.rollups.ROWS_PER_BUCKET` rows), level 2 `store.rollups.FANOUT` times
    that: a series a million rows long is thinned from about a thousand of these
    instead of from every row. ``rows`` counts the rows rolled up (an estimate: a
    row stored twice counts twice).
    """

    __tablename__ = "stat_rollups"
    __table_args__ = {"sqlite_with_rowid": False}

    tensor_id: Mapped[int] = mapped_column(
        ForeignKey("tensors.id", ondelete="CASCADE"), primary_key=True
    )
    rank: Mapped[int] = mapped_column(Integer, primary_key=True)
    level: Mapped[int] = mapped_column(Integer, primary_key=True)
    bucket: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # step // width
    rows: Mapped[int] = mapped_column(BigInteger)
    first_step: Mapped[int] = mapped_column(BigInteger)
    last_step: Mapped[int] = mapped_column(BigInteger)


_ROLLUPS = cast(Table, SqlStatRollup.__table__)
for _stat in STAT_NAMES:  # (stat)_lo, (stat)_lo_step, ... for every statistic
    for _field in ROLLUP_FIELDS:
        _name = rollup_column(_stat, _field)
        if _field in ("lo", "hi"):
            _ROLLUPS.append_column(Column(_name, Double))
        else:
            _ROLLUPS.append_column(Column(_name, BigInteger))


class SqlHistogram(Base):
    """Bin counts of one tensor at one step, packed little-endian.

    ``counts`` holds ``bins`` unsigned integers of 4 or 8 bytes each (the width
    follows from its length). Bins are equal-width over ``[lo, hi]`` unless
    ``edges`` holds ``bins + 1`` little-endian float64 edges. ``sample_size`` is
    how many elements the counts were estimated from, NULL when they cover all.
    """

    __tablename__ = "histograms"
    __table_args__ = {"sqlite_with_rowid": False}

    tensor_id: Mapped[int] = mapped_column(
        ForeignKey("tensors.id", ondelete="CASCADE"), primary_key=True
    )
    step: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    rank: Mapped[int] = mapped_column(Integer, primary_key=True)
    bins: Mapped[int] = mapped_column(Integer)
    lo: Mapped[float | None] = mapped_column(Double)
    hi: Mapped[float | None] = mapped_column(Double)
    edges: Mapped[bytes | None] = mapped_column(LargeBinary)
    counts: Mapped[bytes] = mapped_column(LargeBinary)
    sample_size: Mapped[int | None] = mapped_column(BigInteger)


class SqlUnitMean(Base):
    """Per-unit means of one activation at one step: ``units`` little-endian float32."""

    __tablename__ = "unit_means"
    __table_args__ = {"sqlite_with_rowid": False}

    tensor_id: Mapped[int] = mapped_column(
        ForeignKey("tensors.id", ondelete="CASCADE"), primary_key=True
    )
    step: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    rank: Mapped[int] = mapped_column(Integer, primary_key=True)
    units: Mapped[int] = mapped_column(Integer)
    means: Mapped[bytes] = mapped_column(LargeBinary)


class SqlWeightChange(Base):
    """How far one weight moved at one captured step (see ``wire.WeightChanges``)."""

    __tablename__ = "weight_changes"
    __table_args__ = {"sqlite_with_rowid": False}

    tensor_id: Mapped[int] = mapped_column(
        ForeignKey("tensors.id", ondelete="CASCADE"), primary_key=True
    )
    step: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    rank: Mapped[int] = mapped_column(Integer, primary_key=True)
    since_prev: Mapped[float | None] = mapped_column(Double)
    since_init: Mapped[float | None] = mapped_column(Double)
    update_ratio: Mapped[float | None] = mapped_column(Double)


WEIGHT_CHANGE_METRICS = ("since_prev", "since_init", "update_ratio")
"""The measured columns of `SqlWeightChange`, in the order of `wire.WeightChanges`."""


class SqlModule(Base):
    """One module of a watched model's tree, as the client saw it at the first forward.

    Keyed by the model's class name: the tree a rank sends first for a model is
    the one kept (a resumed run sends it again, unchanged or not).
    """

    __tablename__ = "modules"
    __table_args__ = {"sqlite_with_rowid": False}

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    rank: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(NAME, primary_key=True)
    path: Mapped[str] = mapped_column(NAME, primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(NAME)
    params: Mapped[int] = mapped_column(BigInteger)
    trainable: Mapped[int] = mapped_column(BigInteger)
    inputs: Mapped[list[list[int]] | None] = mapped_column(JSON)
    outputs: Mapped[list[list[int]] | None] = mapped_column(JSON)


class SqlProbe(Base):
    """One probe: the model run on the fixed probe inputs at one step."""

    __tablename__ = "probes"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    step: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    rank: Mapped[int] = mapped_column(Integer, primary_key=True)
    samples: Mapped[int] = mapped_column(Integer)
    labels: Mapped[bytes | None] = mapped_column(LargeBinary)
    predictions: Mapped[bytes | None] = mapped_column(LargeBinary)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Layers the client left out, `[{"name": ..., "reason": ...}]`; None when none.
    skipped: Mapped[list[dict[str, str]] | None] = mapped_column(JSON)


class SqlProbeLayer(Base):
    """One layer's outputs in a probe: float16 features (and conv maps) as packed bytes."""

    __tablename__ = "probe_layers"
    __table_args__ = (
        ForeignKeyConstraint(
            ["run_id", "step", "rank"],
            ["probes.run_id", "probes.step", "probes.rank"],
            ondelete="CASCADE",
        ),
    )

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    step: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    rank: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(NAME, primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    features_shape: Mapped[list[int]] = mapped_column(JSON)
    features: Mapped[bytes] = mapped_column(LargeBinary)
    source_shape: Mapped[list[int] | None] = mapped_column(JSON)
    reduced: Mapped[str] = mapped_column(String(16))
    maps_shape: Mapped[list[int] | None] = mapped_column(JSON)
    maps: Mapped[bytes | None] = mapped_column(LargeBinary)


class SqlProbeAttributions(Base):
    """Integrated gradients of a probe's first samples (see ``wire.ProbeAttributions``).

    ``values`` is little-endian float32 of ``shape``, ``targets`` int32, and
    ``deltas`` float64 (one per sample) when the client sent them.
    """

    __tablename__ = "probe_attributions"
    __table_args__ = (
        ForeignKeyConstraint(
            ["run_id", "step", "rank"],
            ["probes.run_id", "probes.step", "probes.rank"],
            ondelete="CASCADE",
        ),
    )

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    step: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    rank: Mapped[int] = mapped_column(Integer, primary_key=True)
    method: Mapped[str] = mapped_column(String(32))
    shape: Mapped[list[int]] = mapped_column(JSON)
    values: Mapped[bytes] = mapped_column(LargeBinary)
    targets: Mapped[bytes] = mapped_column(LargeBinary)
    steps: Mapped[int] = mapped_column(Integer)
    deltas: Mapped[bytes | None] = mapped_column(LargeBinary)


class SqlEmbedding(Base):
    """A 2-D embedding of one probed layer, kept because t-SNE takes seconds to compute.

    ``coordinates`` is ``(points, 2)`` little-endian float32, one row per
    sample whose features were all finite, in sample order. ``perplexity`` is
    the one t-SNE ran with (0 for PCA). Probes never change once stored, so a
    row never goes stale; it goes with its probe layer.
    """

    __tablename__ = "embeddings"
    __table_args__ = (
        ForeignKeyConstraint(
            ["run_id", "step", "rank", "layer"],
            ["probe_layers.run_id", "probe_layers.step", "probe_layers.rank", "probe_layers.name"],
            ondelete="CASCADE",
        ),
    )

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    step: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    rank: Mapped[int] = mapped_column(Integer, primary_key=True)
    layer: Mapped[str] = mapped_column(NAME, primary_key=True)
    method: Mapped[str] = mapped_column(String(16), primary_key=True)
    perplexity: Mapped[float] = mapped_column(Double, primary_key=True)
    points: Mapped[int] = mapped_column(Integer)
    coordinates: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SqlScalar(Base):
    """One value of a user-logged scalar such as the loss."""

    __tablename__ = "scalars"
    __table_args__ = {"sqlite_with_rowid": False}

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(NAME, primary_key=True)
    step: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    rank: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[float | None] = mapped_column(Double)
    time: Mapped[float | None] = mapped_column(Double)


class SqlNonfiniteEvent(Base):
    """A watched tensor turning non-finite: the first step and tensor the client's
    sentinel saw since its previous report (see `wire.NonfiniteEvent`)."""

    __tablename__ = "nonfinite_events"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    rank: Mapped[int] = mapped_column(Integer, primary_key=True)
    step: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    tensor: Mapped[str] = mapped_column(NAME, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    # Other tensors that turned non-finite at the same step, in forward order.
    also: Mapped[list[str]] = mapped_column(JSON)


class SqlBatch(Base):
    """A batch already stored: what makes a replayed batch a no-op."""

    __tablename__ = "batches"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    batch_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    rank: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    stats: Mapped[int] = mapped_column(Integer)
    histograms: Mapped[int] = mapped_column(Integer)
    scalars: Mapped[int] = mapped_column(Integer)
    unit_means: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    weight_changes: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    models: Mapped[int] = mapped_column(Integer, server_default=text("0"))


class SqlApiToken(Base):
    """An API token: who may do what to which projects. Only the secret's hash is kept."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # SHA-256 of the secret, hex: looked up by value, so a unique index.
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(8))
    # The project names it covers; NULL: every project, present and future.
    projects: Mapped[list[str] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
