"""Dead letters record what the operator did: when, and how (re-published where, or dropped why).

Revision ID: 0003_dead_letter_resolution
Revises: 0002_projection_tables
Create Date: 2026-11-25 01:58:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_dead_letter_resolution"
down_revision: str | Sequence[str] | None = "0002_projection_tables"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _schema() -> str | None:
    # ALTER TABLE is not mapped by the engine's schema_translate_map as CREATE TABLE is: name the
    # schema the read tables live in (env.py keeps the version table there too).
    schema = op.get_context().version_table_schema
    return None if schema is None else str(schema)


def upgrade() -> None:
    """Add when and how a dead letter was resolved."""
    with op.batch_alter_table("dead_letters", schema=_schema()) as batch:
        batch.add_column(sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("resolution", sa.Text(), nullable=True))


def downgrade() -> None:
    """Drop the resolution columns."""
    with op.batch_alter_table("dead_letters", schema=_schema()) as batch:
        batch.drop_column("resolution")
        batch.drop_column("resolved_at")
