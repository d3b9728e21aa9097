"""Token usage, kept by `runevents usage` off the topic: one row a model call, and the group's offsets.

Revision ID: 0004_token_usage
Revises: 0003_dead_letter_resolution
Create Date: 2026-11-27 10:00:00.000000

Written from the models in runevents/tables/schema.py (TokenUsageCall, TokenUsageOffset); the
migration tests compare the upgraded database with them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_token_usage"
down_revision: str | Sequence[str] | None = "0003_dead_letter_resolution"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the usage consumer's calls and offsets."""
    # CREATE TABLE and CREATE INDEX go to the schema through the engine's schema_translate_map.
    op.create_table(
        "token_usage_calls",
        sa.Column("thread_id", sa.String(length=64), nullable=False),
        sa.Column("event_id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=True),
        sa.Column("event_type", sa.String(length=32), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("model", sa.Text(), nullable=True),
        sa.Column("caller", sa.Text(), nullable=True),
        sa.Column("input_tokens", sa.BigInteger(), nullable=True),
        sa.Column("output_tokens", sa.BigInteger(), nullable=True),
        sa.Column("total_tokens", sa.BigInteger(), nullable=True),
        sa.Column("cache_read_tokens", sa.BigInteger(), nullable=True),
        sa.Column("cache_creation_tokens", sa.BigInteger(), nullable=True),
        sa.Column("reasoning_tokens", sa.BigInteger(), nullable=True),
        sa.Column("usage_known", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("thread_id", "event_id", name=op.f("pk_token_usage_calls")),
    )
    op.create_index(
        "ix_token_usage_calls_thread_id_run_id", "token_usage_calls", ["thread_id", "run_id"], unique=False
    )
    op.create_table(
        "token_usage_offsets",
        sa.Column("consumer_group", sa.String(length=255), nullable=False),
        sa.Column("topic", sa.String(length=249), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("next_offset", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("consumer_group", "topic", "partition", name=op.f("pk_token_usage_offsets")),
    )


def downgrade() -> None:
    """Drop the usage tables."""
    op.drop_table("token_usage_offsets")
    op.drop_index("ix_token_usage_calls_thread_id_run_id", table_name="token_usage_calls")
    op.drop_table("token_usage_calls")
