"""Unit means, weight changes, model trees, probes, attributions, embeddings; sample sizes.

Histograms gain the sample size their counts were estimated from; embeddings
cache 2-D projections of probed layers.

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "modules",
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=250), nullable=False),
        sa.Column("path", sa.String(length=250), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(length=250), nullable=False),
        sa.Column("params", sa.BigInteger(), nullable=False),
        sa.Column("trainable", sa.BigInteger(), nullable=False),
        sa.Column("inputs", sa.JSON(), nullable=True),
        sa.Column("outputs", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_modules_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "rank", "model", "path", name=op.f("pk_modules")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "probes",
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("labels", sa.LargeBinary(), nullable=True),
        sa.Column("predictions", sa.LargeBinary(), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_probes_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "step", "rank", name=op.f("pk_probes")),
    )
    op.create_table(
        "probe_layers",
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=250), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("features_shape", sa.JSON(), nullable=False),
        sa.Column("features", sa.LargeBinary(), nullable=False),
        sa.Column("source_shape", sa.JSON(), nullable=True),
        sa.Column("reduced", sa.String(length=16), nullable=False),
        sa.Column("maps_shape", sa.JSON(), nullable=True),
        sa.Column("maps", sa.LargeBinary(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id", "step", "rank"],
            ["probes.run_id", "probes.step", "probes.rank"],
            name=op.f("fk_probe_layers_run_id_probes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("run_id", "step", "rank", "name", name=op.f("pk_probe_layers")),
    )
    op.create_table(
        "probe_attributions",
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("method", sa.String(length=32), nullable=False),
        sa.Column("shape", sa.JSON(), nullable=False),
        sa.Column("values", sa.LargeBinary(), nullable=False),
        sa.Column("targets", sa.LargeBinary(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("deltas", sa.LargeBinary(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id", "step", "rank"],
            ["probes.run_id", "probes.step", "probes.rank"],
            name=op.f("fk_probe_attributions_run_id_probes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("run_id", "step", "rank", name=op.f("pk_probe_attributions")),
    )
    op.create_table(
        "embeddings",
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("layer", sa.String(length=250), nullable=False),
        sa.Column("method", sa.String(length=16), nullable=False),
        sa.Column("perplexity", sa.Double(), nullable=False),
        sa.Column("points", sa.Integer(), nullable=False),
        sa.Column("coordinates", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id", "step", "rank", "layer"],
            ["probe_layers.run_id", "probe_layers.step", "probe_layers.rank", "probe_layers.name"],
            name=op.f("fk_embeddings_run_id_probe_layers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "run_id", "step", "rank", "layer", "method", "perplexity", name=op.f("pk_embeddings")
        ),
    )
    op.create_table(
        "unit_means",
        sa.Column("tensor_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("units", sa.Integer(), nullable=False),
        sa.Column("means", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tensor_id"],
            ["tensors.id"],
            name=op.f("fk_unit_means_tensor_id_tensors"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tensor_id", "step", "rank", name=op.f("pk_unit_means")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "weight_changes",
        sa.Column("tensor_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("since_prev", sa.Double(), nullable=True),
        sa.Column("since_init", sa.Double(), nullable=True),
        sa.Column("update_ratio", sa.Double(), nullable=True),
        sa.ForeignKeyConstraint(
            ["tensor_id"],
            ["tensors.id"],
            name=op.f("fk_weight_changes_tensor_id_tensors"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tensor_id", "step", "rank", name=op.f("pk_weight_changes")),
        sqlite_with_rowid=False,
    )
    with op.batch_alter_table("histograms", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sample_size", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("unit_means", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch_op.add_column(
            sa.Column("weight_changes", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch_op.add_column(
            sa.Column("models", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_column("models")
        batch_op.drop_column("weight_changes")
        batch_op.drop_column("unit_means")

    with op.batch_alter_table("histograms", schema=None) as batch_op:
        batch_op.drop_column("sample_size")
    op.drop_table("weight_changes")
    op.drop_table("unit_means")
    op.drop_table("embeddings")
    op.drop_table("probe_attributions")
    op.drop_table("probe_layers")
    op.drop_table("probes")
    op.drop_table("modules")
