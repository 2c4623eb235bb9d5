"""Alembic migrations on SQLite and PostgreSQL: upgrade, no drift, downgrade, concurrency."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from layerwatch_server.db import make_engine
from layerwatch_server.migrate import (
    current_revisions,
    downgrade_database,
    head_revisions,
    is_up_to_date,
    upgrade_database,
)
from layerwatch_server.models import Base, SqlHistogram
from layerwatch_server.store import codec

TABLES = set(Base.metadata.tables)


@pytest.fixture
def empty_engine(empty_database_url: str) -> Iterator[Engine]:
    engine = make_engine(empty_database_url)
    yield engine
    engine.dispose()


def tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def schema_drift(engine: Engine) -> list[object]:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def test_models_and_tables_agree() -> None:
    expected = {"projects", "runs", "tensors", "stats", "histograms", "scalars", "batches",
                "unit_means", "weight_changes", "modules", "probes", "probe_layers",
                "probe_attributions", "embeddings", "api_tokens", "nonfinite_events",
                "stat_rollups"}  # fmt: skip
    assert expected == TABLES


def test_upgrade_an_empty_database_to_head(empty_engine: Engine) -> None:
    assert tables(empty_engine) == set()
    assert not is_up_to_date(empty_engine)

    upgrade_database(empty_engine)

    assert tables(empty_engine) == TABLES | {"alembic_version"}
    assert is_up_to_date(empty_engine)
    upgrade_database(empty_engine)  # a second upgrade is a no-op
    with empty_engine.connect() as connection:
        assert current_revisions(connection) == head_revisions()


def test_migrations_match_the_models(empty_engine: Engine) -> None:
    upgrade_database(empty_engine)
    assert schema_drift(empty_engine) == []


def test_downgrade_to_base_then_upgrade_again(empty_engine: Engine) -> None:
    upgrade_database(empty_engine)

    downgrade_database(empty_engine, "base")

    assert tables(empty_engine) <= {"alembic_version"}
    with empty_engine.connect() as connection:
        assert current_revisions(connection) == set()
    upgrade_database(empty_engine)
    assert is_up_to_date(empty_engine)
    assert schema_drift(empty_engine) == []


@pytest.mark.slow
def test_two_processes_upgrading_at_once(empty_database_url: str, empty_engine: Engine) -> None:
    """Two servers starting together on a new database: both succeed, the schema is made once."""
    command = [
        sys.executable,
        "-m",
        "layerwatch_server.cli",
        "db",
        "upgrade",
        "--database-url",
        empty_database_url,
    ]
    processes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=120) for process in processes]

    for process, (stdout, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr
        assert "is at head" in stdout
    assert is_up_to_date(empty_engine)
    assert tables(empty_engine) == TABLES | {"alembic_version"}
    assert schema_drift(empty_engine) == []


def test_histograms_are_repacked_and_unpacked_with_the_schema(empty_engine: Engine) -> None:
    """0009 rewrites stored histograms into the packed layout; its downgrade, back."""
    upgrade_database(empty_engine, "0008")
    legacy = [  # (step, bins, lo, hi, counts as stored before 0009)
        (0, 4, -1.0, 1.0, codec.pack_counts([3, 0, 1, 4])),
        (1, 2, 0.1, 0.2, codec.pack_counts([1, 2**40])),  # uint64, bounds not float32
        (2, 3, None, None, codec.pack_counts([5, 5, 5])),
    ]
    with empty_engine.begin() as connection:
        connection.execute(
            text("INSERT INTO projects (id, name, created_at) VALUES (1, 'p', CURRENT_TIMESTAMP)")
        )
        connection.execute(
            text(
                "INSERT INTO runs (id, project_id, name, config, tags, status, started_at, "
                "updated_at) VALUES ('r', 1, 'r', '{}', '[]', 'running', CURRENT_TIMESTAMP, "
                "CURRENT_TIMESTAMP)"
            )
        )
        connection.execute(
            text("INSERT INTO tensors (id, run_id, name, kind) VALUES (1, 'r', 'fc', 'weight')")
        )
        for step, bins, lo, hi, counts in legacy:
            connection.execute(
                text("INSERT INTO histograms (tensor_id, step, rank, bins, lo, hi, counts) "
                     "VALUES (1, :step, 0, :bins, :lo, :hi, :counts)"),
                {"step": step, "bins": bins, "lo": lo, "hi": hi, "counts": counts},
            )  # fmt: skip

    def stored() -> list[tuple[object, ...]]:
        with empty_engine.connect() as connection:
            rows = connection.execute(
                text("SELECT step, bins, lo, hi, counts FROM histograms ORDER BY step")
            )
            return [(s, b, lo, hi, bytes(c)) for s, b, lo, hi, c in rows]

    upgrade_database(empty_engine)
    packed = stored()
    assert [(row[2], row[3]) for row in packed] == [(None, None), (0.1, 0.2), (None, None)]
    rows = [SqlHistogram(tensor_id=1, step=s, rank=0, bins=b, lo=lo, hi=hi, counts=c)
            for s, b, lo, hi, c in packed]  # fmt: skip
    decoded = codec.unpack_histograms(rows)
    assert [h.counts.tolist() for h in decoded] == [[3, 0, 1, 4], [1, 2**40], [5, 5, 5]]
    assert decoded[0].edges.tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]

    downgrade_database(empty_engine, "0008")
    assert stored() == legacy
