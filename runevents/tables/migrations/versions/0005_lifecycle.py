"""The log's lifecycle: threads' own retention policies, and blobs (large contents kept whole).

Revision ID: 0005_lifecycle
Revises: 0004_token_usage
Create Date: 2026-12-07 22:15:00.000000

Written from the models in runevents/tables/schema.py (RetentionPolicyRow, Blob); the migration tests
compare the upgraded database with them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_lifecycle"
down_revision: str | Sequence[str] | None = "0004_token_usage"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the per-thread retention policies and the blobs."""
    op.create_table(
        "retention_policies",
        sa.Column("thread_id", sa.String(length=64), nullable=False),
        sa.Column("policy", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("thread_id"),
    )
    op.create_table(
        "blobs",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("media_type", sa.String(length=255), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("sha256"),
    )


def downgrade() -> None:
    """Drop the per-thread retention policies and the blobs."""
    op.drop_table("blobs")
    op.drop_table("retention_policies")
