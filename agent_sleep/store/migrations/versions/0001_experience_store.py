"""Experience store: agents, episodes, events, feedback, documents, skills.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "agents",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
    )
    op.create_table(
        "episodes",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("agent", sa.String(128), sa.ForeignKey("agents.name"), nullable=False),
        sa.Column("thread_id", sa.String(256)),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("ended_at", TS),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(64)),
        sa.Column("error", sa.Text()),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("consolidated_at", TS),
        sa.Column("consolidation_run", sa.String(64)),
    )
    for col in ("agent", "thread_id", "started_at", "outcome", "consolidated_at"):
        op.create_index(f"ix_episodes_{col}", "episodes", [col])
    op.create_table(
        "events",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("episode_id", sa.String(64), sa.ForeignKey("episodes.id", ondelete="CASCADE"), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("name", sa.String(256)),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("episode_id", "seq", name="uq_events_episode_seq"),
    )
    op.create_index("ix_events_kind", "events", ["kind"])
    op.create_table(
        "feedback",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("episode_id", sa.String(64), sa.ForeignKey("episodes.id", ondelete="CASCADE"), nullable=False),
        sa.Column("score", sa.Float()),
        sa.Column("label", sa.String(64)),
        sa.Column("comment", sa.Text()),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_feedback_episode_id", "feedback", ["episode_id"])
    op.create_table(
        "documents",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("agent", sa.String(128), sa.ForeignKey("agents.name")),
        sa.Column("source", sa.String(512), nullable=False),
        sa.Column("title", sa.String(512)),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("consolidated_at", TS),
        sa.UniqueConstraint("source", "version", name="uq_documents_source_version"),
    )
    op.create_index("ix_documents_hash", "documents", ["content_hash"])
    op.create_index("ix_documents_agent", "documents", ["agent"])
    op.create_index("ix_documents_created_at", "documents", ["created_at"])
    op.create_table(
        "skills",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("agent", sa.String(128), sa.ForeignKey("agents.name")),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
    )
    op.create_index("ix_skills_agent", "skills", ["agent"])


def downgrade() -> None:
    for table in ("skills", "documents", "feedback", "events", "episodes", "agents"):
        op.drop_table(table)
