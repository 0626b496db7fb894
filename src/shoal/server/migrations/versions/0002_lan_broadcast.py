"""networks.broadcast: the per-network LAN switch (docs/lan.md); existing networks get it on.

Revision ID: 0002_lan_broadcast
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_lan_broadcast"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("networks") as batch:
        batch.add_column(sa.Column("broadcast", sa.Boolean, nullable=False, server_default=sa.true()))


def downgrade() -> None:
    with op.batch_alter_table("networks") as batch:
        batch.drop_column("broadcast")
