"""Retention policies of single threads, overriding the default policy the retention job is given.

Revision ID: 0005_retention_policies
Revises: 0004_token_usage
Create Date: 2026-12-07 22:15:00.000000

Written from the model in runevents/tables/schema.py (RetentionPolicyRow); the migration tests compare
the upgraded database with it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_retention_policies"
down_revision: str | Sequence[str] | None = "0004_token_usage"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the per-thread retention policies."""
    op.create_table(
        "retention_policies",
        sa.Column("thread_id", sa.String(length=64), nullable=False),
        sa.Column("policy", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("thread_id"),
    )


def downgrade() -> None:
    """Drop the per-thread retention policies."""
    op.drop_table("retention_policies")
