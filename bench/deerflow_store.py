"""deer-flow's database store, as the benchmarks' faithful baseline: its table, its ORM writes, its seq.

deer-flow (`bytedance/deer-flow`, harness package) stores events with a SQLAlchemy ORM model and an
`AsyncSession`: each call is one transaction that takes a per-thread advisory lock, reads
`max(seq) + 1`, adds ORM rows with content as `json.dumps(..., default=str, ensure_ascii=False)` and
returns the rows as dicts. The table is the one `../shared/peer-schema.md` describes. This module
reproduces that write path in a schema of its own, so the benchmark measures the same work the issue's
numbers (0.084, 0.0063 and 0.0034 of COPY) were measured on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import JSON, DateTime, Index, Integer, String, Text, UniqueConstraint, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA: Final = "bench_deerflow"
MAX_TRACE_CONTENT: Final = 10240


class Base(DeclarativeBase):
    """The declarative base of the baseline's one table."""


class RunEventRow(Base):
    """deer-flow's `run_events` row (peer-schema.md: a serial id, seq per thread, metadata as JSON)."""

    __tablename__ = "run_events"
    __table_args__ = (
        UniqueConstraint("thread_id", "seq", name="uq_events_thread_seq"),
        Index("ix_events_run", "thread_id", "run_id", "seq"),
        Index("ix_events_thread_cat_seq", "thread_id", "category", "seq"),
        Index("ix_run_events_user_id", "user_id"),
        {"schema": SCHEMA},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    thread_id: Mapped[str] = mapped_column(String(64))
    run_id: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    event_type: Mapped[str] = mapped_column(String(32))
    category: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    event_metadata: Mapped[dict[str, Any]] = mapped_column(JSON)
    seq: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


async def create_table(engine: AsyncEngine) -> None:
    """Create the baseline's schema and table (dropping an old one)."""
    async with engine.begin() as connection:
        await connection.execute(text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        await connection.execute(text(f"CREATE SCHEMA {SCHEMA}"))
        await connection.run_sync(Base.metadata.create_all)


def _content_and_metadata(event: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    content = event.get("content", "")
    metadata = dict(event.get("metadata") or {})
    if isinstance(content, str):
        stored = content
    else:
        stored = json.dumps(content, default=str, ensure_ascii=False)
        metadata["content_is_json"] = True
        if isinstance(content, dict):
            metadata["content_is_dict"] = True
    if event["category"] == "trace":
        encoded = stored.encode("utf-8")
        if len(encoded) > MAX_TRACE_CONTENT:
            stored = encoded[:MAX_TRACE_CONTENT].decode("utf-8", errors="ignore")
            metadata.update(content_truncated=True, original_byte_length=len(encoded))
    return stored, metadata


def _record(row: RunEventRow) -> dict[str, Any]:
    metadata = dict(row.event_metadata)
    is_json = metadata.pop("content_is_json", False)
    metadata.pop("content_is_dict", None)
    return {
        "thread_id": row.thread_id,
        "run_id": row.run_id,
        "seq": row.seq,
        "event_type": row.event_type,
        "category": row.category,
        "content": json.loads(row.content) if is_json else row.content,
        "metadata": metadata,
        "created_at": row.created_at.isoformat(),
        "user_id": row.user_id,
    }


class DeerFlowStore:
    """The write half of deer-flow's database store: one ORM transaction per call."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def put_batch(self, events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Write `events` in one transaction, each thread's seq from `max(seq)+1` under its lock."""
        async with self._sessions() as session, session.begin():
            next_seq: dict[str, int] = {}
            rows = []
            for event in events:
                thread_id = event["thread_id"]
                if thread_id not in next_seq:
                    await session.execute(
                        text("SELECT pg_advisory_xact_lock(hashtext(:thread_id))"), {"thread_id": thread_id}
                    )
                    last = await session.scalar(
                        select(func.max(RunEventRow.seq)).where(RunEventRow.thread_id == thread_id)
                    )
                    next_seq[thread_id] = (last or 0) + 1
                content, metadata = _content_and_metadata(event)
                rows.append(
                    RunEventRow(
                        thread_id=thread_id,
                        run_id=event["run_id"],
                        user_id=event.get("user_id"),
                        event_type=event["event_type"],
                        category=event["category"],
                        content=content,
                        event_metadata=metadata,
                        seq=next_seq[thread_id],
                        created_at=datetime.now(UTC),
                    )
                )
                next_seq[thread_id] += 1
            session.add_all(rows)
        return [_record(row) for row in rows]

    async def put(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """Write one event in its own transaction."""
        (record,) = await self.put_batch([event])
        return record
