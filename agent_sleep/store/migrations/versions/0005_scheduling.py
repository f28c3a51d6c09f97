"""Scheduling: per-agent leases, schedules, sleep requests; deployments carry structured detail.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    # Numbers behind a deployment (e.g. the online guard's test that rolled a stack back).
    op.add_column("deployments", sa.Column("detail", sa.JSON()))
    # One row per agent: whoever holds an unexpired lease may run that agent's cycle.
    op.create_table(
        "agent_leases",
        sa.Column("agent", sa.String(128), sa.ForeignKey("agents.name"), primary_key=True),
        sa.Column("owner", sa.String(128)),  # host:pid:token of the worker holding it (None: free)
        sa.Column("token", sa.Integer(), nullable=False),  # fencing token: +1 on every acquisition
        sa.Column("run_id", sa.String(64)),  # the run the holder is driving, once it has one
        sa.Column("acquired_at", TS),
        sa.Column("renewed_at", TS),
        sa.Column("expires_at", TS),
    )
    op.create_table(
        "schedules",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("agent", sa.String(128), sa.ForeignKey("agents.name"), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),  # cron | interval | new_episodes | documents
        sa.Column("spec", sa.JSON(), nullable=False),  # {"cron": "0 3 * * *"} | {"seconds": 3600} | {"min_episodes": 50}
        sa.Column("config_path", sa.Text()),  # the cycle config a run of this schedule uses (None: defaults)
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("last_fired_at", TS),
    )
    op.create_index("ix_schedules_agent", "schedules", ["agent"])
    # A request to run an agent's cycle: from a schedule, a trigger, or a person (`sleep --enqueue`).
    op.create_table(
        "sleep_requests",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("agent", sa.String(128), sa.ForeignKey("agents.name"), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),  # schedule:<id> | trigger:<kind> | manual
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),  # pending | running | done | coalesced | failed
        sa.Column("run_id", sa.String(64)),
        sa.Column("worker", sa.String(128)),
        sa.Column("requested_at", TS, nullable=False),
        sa.Column("started_at", TS),
        sa.Column("ended_at", TS),
        sa.Column("detail", sa.JSON()),
    )
    op.create_index("ix_sleep_requests_agent_status", "sleep_requests", ["agent", "status"])


def downgrade() -> None:
    op.drop_index("ix_sleep_requests_agent_status", "sleep_requests")
    op.drop_table("sleep_requests")
    op.drop_index("ix_schedules_agent", "schedules")
    op.drop_table("schedules")
    op.drop_table("agent_leases")
    op.drop_column("deployments", "detail")
