"""The bus projector's tables: projection_offsets, op_results, deleted_events, dead_letters.

Revision ID: 0002_projection_tables
Revises: 0001_read_tables
Create Date: 2026-11-24 22:15:45.246132

Generated with `alembic revision --autogenerate` against a SQLite database at 0001, then reviewed.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_projection_tables"
down_revision: str | Sequence[str] | None = "0001_read_tables"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the projector's offsets, op results and dead letters."""
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("projection", sa.String(length=64), nullable=False),
        sa.Column("topic", sa.String(length=249), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("key", sa.LargeBinary(), nullable=True),
        sa.Column("value", sa.LargeBinary(), nullable=True),
        sa.Column("headers", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="open", nullable=False),
        sa.Column("dead_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letters")),
        sa.UniqueConstraint(
            "projection",
            "topic",
            "partition",
            "offset",
            name=op.f("uq_dead_letters_projection_topic_partition_offset"),
        ),
    )
    op.create_table(
        "op_results",
        sa.Column("thread_id", sa.String(length=64), nullable=False),
        sa.Column("event_id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("op", sa.String(length=16), nullable=False),
        sa.Column("removed", sa.BigInteger(), nullable=True),
        sa.Column("seq", sa.BigInteger(), nullable=True),
        sa.Column("created", sa.Boolean(), nullable=True),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("thread_id", "event_id", name=op.f("pk_op_results")),
    )
    op.create_table(
        "deleted_events",
        sa.Column("thread_id", sa.String(length=64), nullable=False),
        sa.Column("event_id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("thread_id", "event_id", name=op.f("pk_deleted_events")),
    )
    op.create_table(
        "projection_offsets",
        sa.Column("projection", sa.String(length=64), nullable=False),
        sa.Column("topic", sa.String(length=249), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("next_offset", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("projection", "topic", "partition", name=op.f("pk_projection_offsets")),
    )


def downgrade() -> None:
    """Drop the projector's tables."""
    op.drop_table("projection_offsets")
    op.drop_table("deleted_events")
    op.drop_table("op_results")
    op.drop_table("dead_letters")
