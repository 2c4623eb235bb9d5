"""Probes keep the layers the client left out, with the reason for each.

A JSON list of `{"name", "reason"}` (see `wire.ProbeSkipped`); NULL for probes
stored before, and for probes that left nothing out.

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("probes", sa.Column("skipped", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("probes") as batch:
        batch.drop_column("skipped")
