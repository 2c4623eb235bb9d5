"""Runs note when their process last spoke, so a silent one is reported crashed.

Existing runs are taken as last seen at their last update: a run left
`running` by a process that died before this migration reads `crashed`.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE runs SET last_seen_at = updated_at")


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("last_seen_at")
