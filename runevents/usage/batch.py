"""One fetched batch applied to the usage tables in one transaction: the fence, the calls, the deletes.

Each `llm.ai.response` put becomes one row of `token_usage_calls` (with or without usage); other puts
only move the offset. A delete op removes the thread's (or run's) rows after everything before it in its
partition is written: log order is the order of effects, so usage follows erasure. A record that cannot
be decoded is skipped and counted; the projector's dead letters are its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiokafka.structs import ConsumerRecord
from sqlalchemy import and_, delete, exists, literal, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from runevents.bus.projector.decoding import Op, data_keys, decode_consumer_record
from runevents.bus.projector.offsets import Fence, Owned
from runevents.crypto.sealing import DataKeys
from runevents.events import (
    DeleteRunEnvelope,
    ExpireEnvelope,
    PreparedEvent,
    SetRetentionEnvelope,
    UndecodableRecordError,
)
from runevents.tables.keys import ThreadKeys
from runevents.tables.schema import token_usage_calls
from runevents.usage.extraction import caller_of, is_ai_response, model_of, usage_of
from runevents.usage.offsets import USAGE_OFFSETS

_c = token_usage_calls.c


@dataclass
class Applied:
    """What one batch did (counted into the consumer's totals only once it commits)."""

    calls: int = 0
    # Calls whose record carried no usage, and calls whose usage was garbage (both of unknown usage).
    without_usage: int = 0
    bad_usage: int = 0
    undecodable: int = 0
    deletes: int = 0
    first_problem: str | None = None
    # The rows the batch wrote, for an exporter once it commits (not summed by `add`).
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, other: Applied) -> None:
        """Count `other` in."""
        self.calls += other.calls
        self.without_usage += other.without_usage
        self.bad_usage += other.bad_usage
        self.undecodable += other.undecodable
        self.deletes += other.deletes

    def note(self, problem: str) -> None:
        """Keep the batch's first problem for its one log line."""
        if self.first_problem is None:
            self.first_problem = problem


def call_row(event: PreparedEvent, partition: int, offset: int, applied: Applied) -> dict[str, Any] | None:
    """The `token_usage_calls` row of a put, or None if it is no model call; counts it in `applied`."""
    if not is_ai_response(event.event_type):
        return None
    usage = usage_of(event.content, event.metadata)
    applied.calls += 1
    if usage is None:
        applied.without_usage += 1
    elif usage.problem is not None:
        applied.bad_usage += 1
        applied.note(f"{event.thread_id}/{event.event_id}: {usage.problem}")
    known = usage is not None and usage.known
    return {
        "thread_id": event.thread_id,
        "event_id": event.event_id,
        "run_id": event.run_id,
        "user_id": event.user_id,
        "event_type": event.event_type,
        "partition": partition,
        "offset": offset,
        "model": model_of(event.content, event.metadata),
        "caller": caller_of(event.metadata),
        "input_tokens": usage.input_tokens if usage else None,
        "output_tokens": usage.output_tokens if usage else None,
        "total_tokens": usage.total_tokens if usage else None,
        "cache_read_tokens": usage.cache_read_tokens if usage else None,
        "cache_creation_tokens": usage.cache_creation_tokens if usage else None,
        "reasoning_tokens": usage.reasoning_tokens if usage else None,
        "usage_known": known,
        "created_at": event.created,
    }


class UsageBatchWriter:
    """Writes fetched batches of one usage group: fence, rows and deletes in one transaction each."""

    def __init__(self, *, topic: str, group: str, schema: str | None, keys: ThreadKeys | None = None) -> None:
        self._fence = Fence(topic=topic, projection=group, schema=schema, offsets=USAGE_OFFSETS)
        self._topic = topic
        self._keys = keys

    async def write(self, engine: AsyncEngine, owned: Owned) -> Applied:
        """Fence, then apply every partition's records; what the batch did, once it committed."""
        applied = Applied()
        async with engine.begin() as connection:
            await self._fence.move(connection, owned)
            keys = await data_keys(self._keys, connection, owned, self._topic)
            # Partitions hold disjoint threads: their rows go in together, an op after all before it.
            rows: list[dict[str, Any]] = []
            for tp, records, _, _ in owned:
                for record in records:
                    await self._apply(connection, tp.partition, record, rows, applied, keys)
            await _insert(connection, rows, applied)
        return applied

    async def _apply(
        self,
        connection: AsyncConnection,
        partition: int,
        record: ConsumerRecord,
        rows: list[dict[str, Any]],
        applied: Applied,
        keys: DataKeys,
    ) -> None:
        try:
            decoded = decode_consumer_record(record, max_trace_content=None, keys=keys)
        except UndecodableRecordError as error:
            applied.undecodable += 1
            applied.note(f"{record.topic}/{partition}/{record.offset}: {error.reason}")
            return
        if isinstance(decoded, PreparedEvent):
            row = call_row(decoded, partition, record.offset, applied)
            if row is not None:
                rows.append(row)
            return
        # Everything before an op is applied before it: a delete must not miss a call it follows.
        await _insert(connection, rows, applied)
        rows.clear()
        await _apply_op(connection, decoded, partition, record.offset, applied)


async def _insert(connection: AsyncConnection, rows: list[dict[str, Any]], applied: Applied) -> None:
    """Insert calls, skipping event ids already there (a producer's retry, a backfill run twice)."""
    if rows:
        applied.rows.extend(rows)
        # executemany: SQLAlchemy pages it into multi-row INSERTs under the driver's parameter limit.
        await connection.execute(postgresql.insert(token_usage_calls).on_conflict_do_nothing(), rows)


async def _apply_op(
    connection: AsyncConnection, op: Op, partition: int, offset: int, applied: Applied
) -> None:
    if isinstance(op, tuple):
        # put_if_absent writes unless the run already has an event of its type; every model call of a
        # run has a row here, so the same test on these rows gives the projector's answer.
        _, event = op
        row = call_row(event, partition, offset, Applied())
        if row is None:
            return
        already = exists().where(
            and_(
                _c.thread_id == event.thread_id,
                _c.run_id == event.run_id,
                _c.event_type == event.event_type,
            )
        )
        chosen = select(*(literal(value, _c[name].type) for name, value in row.items())).where(~already)
        inserted = await connection.execute(
            postgresql.insert(token_usage_calls).from_select(list(row), chosen).on_conflict_do_nothing()
        )
        if inserted.rowcount:
            call_row(event, partition, offset, applied)  # counted only when written
            applied.rows.append(row)
        return
    if isinstance(op, ExpireEnvelope | SetRetentionEnvelope):
        # Retention expires the events, not what they cost: usage is kept for its own period.
        return
    applied.deletes += 1
    removal = delete(token_usage_calls).where(_c.thread_id == op.thread_id)
    if isinstance(op, DeleteRunEnvelope):
        removal = removal.where(_c.run_id == op.run_id)
    await connection.execute(removal)
