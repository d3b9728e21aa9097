"""The read tables: run_events and thread_counters.

Revision ID: 0001_read_tables
Revises:
Create Date: 2026-11-24 20:59:01.504549

Generated with `alembic revision --autogenerate` against an empty SQLite database, then reviewed:
the partial indexes keep their WHERE for both dialects, and the CHECK on content_kind is spelled
out here rather than imported, so this revision stays what it was when the models change.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_read_tables"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create run_events and thread_counters with their keys and indexes."""
    op.create_table(
        "run_events",
        sa.Column("thread_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("event_id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("event_type", sa.String(length=32), nullable=False),
        sa.Column("category", sa.String(length=16), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("content_kind", sa.String(length=4), nullable=False),
        sa.Column("metadata", sa.Text(), nullable=False),
        sa.Column("task_id", sa.Text(), nullable=True),
        sa.Column("caller", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=True),
        sa.Column("message_id", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "content_kind IN ('str', 'dict', 'list', 'jstr')", name=op.f("ck_run_events_content_kind")
        ),
        sa.PrimaryKeyConstraint("thread_id", "seq", name=op.f("pk_run_events")),
        sa.UniqueConstraint("thread_id", "event_id", name=op.f("uq_run_events_thread_id_event_id")),
    )
    op.create_index("ix_run_events_thread_id_run_id_seq", "run_events", ["thread_id", "run_id", "seq"])
    op.create_index(
        "ix_run_events_messages",
        "run_events",
        ["thread_id", "seq"],
        postgresql_where=sa.text("category = 'message'"),
        sqlite_where=sa.text("category = 'message'"),
    )
    op.create_index(
        "ix_run_events_user_messages",
        "run_events",
        ["thread_id", "user_id", "seq"],
        postgresql_where=sa.text("category = 'message' AND user_id IS NOT NULL"),
        sqlite_where=sa.text("category = 'message' AND user_id IS NOT NULL"),
    )
    op.create_index(
        "ix_run_events_thread_id_message_id",
        "run_events",
        ["thread_id", "message_id", "seq"],
        postgresql_where=sa.text("message_id IS NOT NULL"),
        sqlite_where=sa.text("message_id IS NOT NULL"),
    )

    op.create_table(
        "thread_counters",
        sa.Column("thread_id", sa.String(length=64), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("event_count", sa.BigInteger(), nullable=False),
        sa.Column("message_count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("thread_id", name=op.f("pk_thread_counters")),
    )


def downgrade() -> None:
    """Drop both tables; their indexes and constraints go with them."""
    op.drop_table("thread_counters")
    op.drop_table("run_events")
