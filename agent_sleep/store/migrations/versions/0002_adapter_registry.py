"""Adapter registry: adapter versions, aliases, stacks, deployments.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "adapter_versions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("skill", sa.String(128), sa.ForeignKey("skills.name"), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(160), nullable=False, unique=True),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("weights_sha256", sa.String(64), nullable=False),
        sa.Column("base_model_id", sa.String(512), nullable=False),
        sa.Column("base_model_hash", sa.String(64), nullable=False),
        sa.Column("generator", sa.String(32), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("target_modules", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_reason", sa.Text()),
        sa.Column("sources", sa.JSON(), nullable=False),
        sa.Column("eval_summary", sa.JSON(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("skill", "version", name="uq_adapter_versions_skill_version"),
    )
    op.create_index("ix_adapter_versions_skill", "adapter_versions", ["skill"])
    op.create_index("ix_adapter_versions_base_model_hash", "adapter_versions", ["base_model_hash"])
    op.create_index("ix_adapter_versions_status", "adapter_versions", ["status"])
    op.create_table(
        "adapter_aliases",
        sa.Column("skill", sa.String(128), sa.ForeignKey("skills.name"), primary_key=True),
        sa.Column("alias", sa.String(32), primary_key=True),
        sa.Column("version_id", sa.String(64), sa.ForeignKey("adapter_versions.id"), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "stacks",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("agent", sa.String(128), sa.ForeignKey("agents.name"), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("items", sa.JSON(), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("agent", "version", name="uq_stacks_agent_version"),
    )
    op.create_index("ix_stacks_agent_hash", "stacks", ["agent", "content_hash"])
    op.create_table(
        "deployments",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("agent", sa.String(128), sa.ForeignKey("agents.name"), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("stack_id", sa.String(64), sa.ForeignKey("stacks.id"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("run_id", sa.String(64)),
        sa.Column("previous_id", sa.String(64)),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("agent", "seq", name="uq_deployments_agent_seq"),
    )
    op.create_index("ix_deployments_agent", "deployments", ["agent"])


def downgrade() -> None:
    for table in ("deployments", "stacks", "adapter_aliases", "adapter_versions"):
        op.drop_table(table)
