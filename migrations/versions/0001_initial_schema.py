"""Initial schema: projects, runs, tensors, stats, histograms, scalars, batches.

Revision ID: 0001
Revises:
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=250), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_projects")),
        sa.UniqueConstraint("name", name=op.f("uq_projects_name")),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=250), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("host", sa.String(length=250), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_runs_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
    )
    op.create_index("ix_runs_project_id_started_at", "runs", ["project_id", "started_at"])

    op.create_table(
        "batches",
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("batch_id", sa.String(length=64), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stats", sa.Integer(), nullable=False),
        sa.Column("histograms", sa.Integer(), nullable=False),
        sa.Column("scalars", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_batches_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "batch_id", name=op.f("pk_batches")),
    )
    op.create_table(
        "scalars",
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=250), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("value", sa.Double(), nullable=True),
        sa.Column("time", sa.Double(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_scalars_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "name", "step", "rank", name=op.f("pk_scalars")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "tensors",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=250), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("module_type", sa.String(length=250), nullable=True),
        sa.Column("shape", sa.JSON(), nullable=True),
        sa.Column("dtype", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_tensors_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tensors")),
        sa.UniqueConstraint("run_id", "name", "kind", name=op.f("uq_tensors_run_id_name_kind")),
    )
    op.create_table(
        "histograms",
        sa.Column("tensor_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("bins", sa.Integer(), nullable=False),
        sa.Column("lo", sa.Double(), nullable=True),
        sa.Column("hi", sa.Double(), nullable=True),
        sa.Column("edges", sa.LargeBinary(), nullable=True),
        sa.Column("counts", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tensor_id"],
            ["tensors.id"],
            name=op.f("fk_histograms_tensor_id_tensors"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tensor_id", "step", "rank", name=op.f("pk_histograms")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "stats",
        sa.Column("tensor_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("mean", sa.Double(), nullable=True),
        sa.Column("std", sa.Double(), nullable=True),
        sa.Column("min", sa.Double(), nullable=True),
        sa.Column("max", sa.Double(), nullable=True),
        sa.Column("abs_mean", sa.Double(), nullable=True),
        sa.Column("l2", sa.Double(), nullable=True),
        sa.Column("zero_frac", sa.Double(), nullable=True),
        sa.Column("nonfinite", sa.BigInteger(), nullable=False),
        sa.Column("numel", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tensor_id"],
            ["tensors.id"],
            name=op.f("fk_stats_tensor_id_tensors"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tensor_id", "step", "rank", name=op.f("pk_stats")),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table("stats")
    op.drop_table("histograms")
    op.drop_table("tensors")
    op.drop_table("scalars")
    op.drop_table("batches")
    op.drop_index("ix_runs_project_id_started_at", table_name="runs")

    op.drop_table("runs")
    op.drop_table("projects")
