"""Initial schema: nodes, networks, memberships, bans, settings.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("node_id", sa.String(16), primary_key=True),
        sa.Column("public_key", sa.LargeBinary(32), nullable=False, unique=True),
        sa.Column("nickname", sa.String(64), nullable=False),
        sa.Column("ipv4", sa.String(15), nullable=False, unique=True),
        sa.Column("ipv6", sa.String(39), nullable=False, unique=True),
        sa.Column("endpoints", sa.Text, nullable=False, server_default="[]"),
        sa.Column("present", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "networks",
        sa.Column("network_id", sa.String(16), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("name_key", sa.String(256), nullable=False, unique=True),
        sa.Column("owner_id", sa.String(16), sa.ForeignKey("nodes.node_id"), nullable=False),
        sa.Column("password_hash", sa.String(200), nullable=False),
        sa.Column("locked", sa.Boolean, nullable=False),
        sa.Column("approval", sa.String(8), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "memberships",
        sa.Column("network_id", sa.String(16), sa.ForeignKey("networks.network_id", ondelete="CASCADE"), primary_key=True),
        sa.Column("node_id", sa.String(16), sa.ForeignKey("nodes.node_id"), primary_key=True),
        sa.Column("role", sa.String(8), nullable=False),
        sa.Column("pending", sa.Boolean, nullable=False),
        sa.Column("online", sa.Boolean, nullable=False),
        sa.Column("joined_at", sa.Float, nullable=False),
    )
    op.create_index("ix_memberships_node", "memberships", ["node_id"])
    op.create_table(
        "bans",
        sa.Column("network_id", sa.String(16), sa.ForeignKey("networks.network_id", ondelete="CASCADE"), primary_key=True),
        sa.Column("node_id", sa.String(16), sa.ForeignKey("nodes.node_id"), primary_key=True),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "settings",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )


def downgrade() -> None:
    for t in ("settings", "bans", "memberships", "networks", "nodes"):
        op.drop_table(t)
