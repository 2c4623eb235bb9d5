"""Statistics rolled up per bucket of steps (the envelope that thinned series read), and
each tensor's bucket width.

Tensors stored before this revision have no width: their series are read row by
row, as before, until a new batch for them fixes a width and rolls up their rows.

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STAT_NAMES = ("mean", "std", "min", "max", "abs_mean", "l2", "zero_frac", "nonfinite", "numel")
FIELDS = ("lo", "lo_step", "hi", "hi_step", "nan_step")


def upgrade() -> None:
    op.add_column("tensors", sa.Column("rollup_width", sa.BigInteger(), nullable=True))
    columns = [
        sa.Column(f"{stat}_{field}", sa.Double() if field in ("lo", "hi") else sa.BigInteger())
        for stat in STAT_NAMES
        for field in FIELDS
    ]
    op.create_table(
        "stat_rollups",
        sa.Column("tensor_id", sa.Integer(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("bucket", sa.BigInteger(), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("first_step", sa.BigInteger(), nullable=False),
        sa.Column("last_step", sa.BigInteger(), nullable=False),
        *columns,
        sa.ForeignKeyConstraint(
            ["tensor_id"],
            ["tensors.id"],
            name=op.f("fk_stat_rollups_tensor_id_tensors"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "tensor_id", "rank", "level", "bucket", name=op.f("pk_stat_rollups")
        ),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table("stat_rollups")
    with op.batch_alter_table("tensors") as batch:
        batch.drop_column("rollup_width")
