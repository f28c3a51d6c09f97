"""Consolidation runs: feedback corrections, runs and their stages, one row per selection decision.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    # The right answer a human (or a later turn) gave when the agent was wrong.
    op.add_column("feedback", sa.Column("correction", sa.Text()))
    op.add_column("documents", sa.Column("consolidation_run", sa.String(64)))
    op.create_table(
        "consolidation_runs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("agent", sa.String(128), sa.ForeignKey("agents.name"), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),  # running | finished
        sa.Column("outcome", sa.String(32)),  # promoted | rejected_by_gate | no_signal | failed | skipped_overlap
        sa.Column("stage", sa.String(32)),  # the stage running now, or the last one that ran
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("folder", sa.Text()),
        sa.Column("error", sa.Text()),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("deployed_stack", sa.String(200)),
        sa.Column("owner", sa.String(128)),  # host:pid of the process running it
        sa.Column("heartbeat_at", TS),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("ended_at", TS),
    )
    op.create_index("ix_consolidation_runs_agent_started", "consolidation_runs", ["agent", "started_at"])
    op.create_index("ix_consolidation_runs_status", "consolidation_runs", ["status"])
    op.create_table(
        "run_stages",
        sa.Column("run_id", sa.String(64), sa.ForeignKey("consolidation_runs.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("stage", sa.String(32), primary_key=True),  # select | generate | evaluate | deploy
        sa.Column("status", sa.String(16), nullable=False),  # started | done | failed
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text()),
        sa.Column("seconds", sa.Float()),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("ended_at", TS),
    )
    op.create_table(
        "selection_decisions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(64), sa.ForeignKey("consolidation_runs.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("item_kind", sa.String(16), nullable=False),  # episode | document
        sa.Column("item_id", sa.String(64), nullable=False),
        sa.Column("selector", sa.String(64), nullable=False),
        sa.Column("kept", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("skill", sa.String(128)),
        sa.Column("role", sa.String(16)),  # train | probe | None (dropped, or not assigned yet)
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_selection_decisions_run_item", "selection_decisions", ["run_id", "item_id"])


def downgrade() -> None:
    op.drop_index("ix_selection_decisions_run_item", "selection_decisions")
    op.drop_table("selection_decisions")
    op.drop_table("run_stages")
    op.drop_index("ix_consolidation_runs_status", "consolidation_runs")
    op.drop_index("ix_consolidation_runs_agent_started", "consolidation_runs")
    op.drop_table("consolidation_runs")
    with op.batch_alter_table("documents") as batch:
        batch.drop_column("consolidation_run")
    with op.batch_alter_table("feedback") as batch:
        batch.drop_column("correction")
