"""Feedback carries an instruction: how the agent should behave from now on.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # "Always ask for the order number first": behaviour for every later conversation, unlike ``correction``
    # (the right answer to this one question). A consolidation run makes it the description of the agent's
    # dialog skill, which the t2l generator turns into an adapter.
    op.add_column("feedback", sa.Column("instruction", sa.Text()))


def downgrade() -> None:
    with op.batch_alter_table("feedback") as batch:
        batch.drop_column("instruction")
