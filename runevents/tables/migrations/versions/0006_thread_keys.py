"""Threads' data keys, wrapped by a key-encryption key (encryption of the bus's records, erasure).

Revision ID: 0006_thread_keys
Revises: 0005_lifecycle
Create Date: 2026-12-08 01:00:00.000000

Written from the model in runevents/tables/schema.py (ThreadKey); the migration tests compare the
upgraded database with it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_thread_keys"
down_revision: str | Sequence[str] | None = "0005_lifecycle"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the threads' data keys."""
    op.create_table(
        "thread_keys",
        sa.Column("key_id", sa.String(length=36), nullable=False),
        sa.Column("thread_id", sa.String(length=64), nullable=False),
        sa.Column("kek_id", sa.String(length=64), nullable=False),
        sa.Column("wrapped", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("destroyed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("key_id"),
    )
    op.create_index("ix_thread_keys_thread_id", "thread_keys", ["thread_id"])
    op.create_index(
        "uq_thread_keys_live",
        "thread_keys",
        ["thread_id"],
        unique=True,
        postgresql_where=sa.text("destroyed_at IS NULL"),
        sqlite_where=sa.text("destroyed_at IS NULL"),
    )


def downgrade() -> None:
    """Drop the threads' data keys."""
    op.drop_index("uq_thread_keys_live", table_name="thread_keys")
    op.drop_index("ix_thread_keys_thread_id", table_name="thread_keys")
    op.drop_table("thread_keys")
