"""Adapter status details and history: why a version is rejected (check, policy) and every status change.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    # Nullable: versions rejected before this revision have no detail and stay rejected until approved.
    op.add_column("adapter_versions", sa.Column("status_detail", sa.JSON()))
    op.create_table(
        "adapter_status_changes",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("version_id", sa.String(64), sa.ForeignKey("adapter_versions.id"), nullable=False),
        sa.Column("from_status", sa.String(16), nullable=False),
        sa.Column("to_status", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("detail", sa.JSON()),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_adapter_status_changes_version_id", "adapter_status_changes", ["version_id"])


def downgrade() -> None:
    op.drop_index("ix_adapter_status_changes_version_id", "adapter_status_changes")
    op.drop_table("adapter_status_changes")
    with op.batch_alter_table("adapter_versions") as batch:  # SQLite cannot drop a column in place
        batch.drop_column("status_detail")
