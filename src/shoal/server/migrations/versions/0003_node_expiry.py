"""Issue 18 F5, F6: nodes.last_seen and nodes.last_prefix (node expiry, bans by source prefix),
bans.prefix, memberships.note. Existing nodes count as seen at the upgrade, so none expires
before NODE_EXPIRY has passed after it; existing bans have no prefix (they bind the key only).

Revision ID: 0003_node_expiry
Revises: 0002_lan_broadcast
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

revision = "0003_node_expiry"
down_revision = "0002_lan_broadcast"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("last_seen", sa.Float, nullable=False, server_default="0"))
        batch.add_column(sa.Column("last_prefix", sa.String(43), nullable=True))
    op.execute(sa.text("UPDATE nodes SET last_seen = :t").bindparams(t=time.time()))
    with op.batch_alter_table("bans") as batch:
        batch.add_column(sa.Column("prefix", sa.String(43), nullable=True))
    with op.batch_alter_table("memberships") as batch:
        batch.add_column(sa.Column("note", sa.String(32), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("memberships") as batch:
        batch.drop_column("note")
    with op.batch_alter_table("bans") as batch:
        batch.drop_column("prefix")
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("last_prefix")
        batch.drop_column("last_seen")
