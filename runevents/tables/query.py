"""The read side: every read of the contract over the read tables, each an index range scan.

The sql backend and the bus backend (whose projector writes the same tables) both read here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Collection
from datetime import UTC
from typing import Any, Final

import orjson
from sqlalchemy import Select, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncEngine

from runevents.events import (
    AI_RESPONSE_EVENT_TYPES,
    MESSAGE_CATEGORY,
    MIDDLEWARE_CALLER_PREFIX,
    Record,
    utc_iso,
)
from runevents.lifecycle.offload import blob_address
from runevents.lifecycle.retention import Summary
from runevents.store.base import RunEventStore
from runevents.store.subscriptions import Doorbell, SharedReads, watching
from runevents.tables import migrate
from runevents.tables.failures import DATABASE_ERRORS, ReadFailedError, reason_of
from runevents.tables.listener import ThreadListener
from runevents.tables.schema import STR, retention_policies, run_events, thread_counters

_e = run_events.c
# Without LISTEN (SQLite), how often a subscription looks by itself for other processes' writes.
UNNOTIFIED_POLL_S: Final = 0.5
# A literal, not a bound parameter: a generic plan could not match the partial message indexes
# (`WHERE category = 'message'`) against a parameter.
IS_MESSAGE: Final = _e.category == literal_column(f"'{MESSAGE_CATEGORY}'")
RECORD_COLUMNS: Final = (
    _e.thread_id,
    _e.run_id,
    _e.seq,
    _e.event_id,
    _e.event_type,
    _e.category,
    _e.content,
    _e.content_kind,
    _e.metadata,
    _e.created_at,
    _e.user_id,
)


def row_to_record(row: Any) -> Record:
    """The envelope record of a `run_events` row selected with `RECORD_COLUMNS`."""
    created_at = row.created_at
    if created_at.tzinfo is None:  # SQLite returns what it stored, UTC without an offset
        created_at = created_at.replace(tzinfo=UTC)
    return {
        "thread_id": row.thread_id,
        "run_id": row.run_id,
        "seq": row.seq,
        "event_id": row.event_id,
        "event_type": row.event_type,
        "category": row.category,
        "content": row.content if row.content_kind == STR else orjson.loads(row.content),
        "metadata": orjson.loads(row.metadata),
        "created_at": utc_iso(created_at),
        "user_id": row.user_id,
    }


def _scoped(statement: Select[Any], user_id: str | None) -> Select[Any]:
    return statement if user_id is None else statement.where(_e.user_id == user_id)


def _page(
    statement: Select[Any], limit: int, before_seq: int | None, after_seq: int | None
) -> tuple[Select[Any], bool]:
    """Apply the contract's paging rule; the flag says the rows come newest first."""
    if before_seq is not None:
        statement = statement.where(_e.seq < before_seq)
    if after_seq is not None:
        return statement.where(_e.seq > after_seq).order_by(_e.seq.asc()).limit(limit), False
    return statement.order_by(_e.seq.desc()).limit(limit), True


class ReadTablesStore(RunEventStore):
    """A store whose reads come from the read tables behind `self._engine`; subclasses write them."""

    _engine: AsyncEngine
    _schema: str | None
    _schema_checked: bool = False
    # Created lazily: the first callers of a fresh store arrive together, and one check is enough.
    _schema_lock: asyncio.Lock | None = None
    # The DSN whose thread notifications subscriptions listen to (PostgreSQL); None: no LISTEN (SQLite).
    _listen_dsn: str | None = None
    _shared_reads: SharedReads[tuple[Any, ...], list[Any]] | None = None

    def _watch(self, thread_id: str) -> contextlib.AbstractAsyncContextManager[Doorbell]:
        """A doorbell rung when `thread_id` may have new records readable here."""
        if self._listen_dsn is not None:
            return ThreadListener.watch(self._listen_dsn, self._schema, thread_id)
        return watching(self._doorbells, thread_id)

    def _subscription_poll_s(self) -> float | None:
        return None if self._listen_dsn is not None else UNNOTIFIED_POLL_S

    async def _records_after(
        self,
        thread_id: str,
        after_seq: int,
        limit: int,
        run_id: str | None,
        categories: Collection[str] | None,
        user_id: str | None,
    ) -> list[Record]:
        def fetch() -> Awaitable[list[Any]]:
            # Built by the one read that goes out, not by each subscription that joins it.
            statement: Select[Any] = select(*RECORD_COLUMNS).where(
                _e.thread_id == thread_id, _e.seq > after_seq
            )
            if run_id is not None:
                statement = statement.where(_e.run_id == run_id)
            if categories is not None:
                statement = statement.where(_e.category.in_(sorted(categories)))
            return self._rows(_scoped(statement, user_id).order_by(_e.seq.asc()).limit(limit))

        if self._shared_reads is None:
            self._shared_reads = SharedReads()
        key = (
            thread_id,
            after_seq,
            limit,
            run_id,
            None if categories is None else frozenset(categories),
            user_id,
        )
        rows = await self._shared_reads.read(key, fetch)
        # Records of their own for each subscription: what one caller does to a record, no other sees.
        return [row_to_record(row) for row in rows]

    async def _thread_last_seq(self, thread_id: str) -> int:
        """The thread's seq counter (0 for a thread that has none)."""
        rows = await self._rows(
            select(thread_counters.c.last_seq).where(thread_counters.c.thread_id == thread_id)
        )
        return int(rows[0][0]) if rows else 0

    async def _ready(self) -> None:
        """Refuse to run on read tables older than this version needs (checked once per store)."""
        if self._schema_checked:
            return
        if self._schema_lock is None:
            self._schema_lock = asyncio.Lock()
        async with self._schema_lock:
            if self._schema_checked:
                return
            try:
                async with self._engine.connect() as connection:
                    await migrate.check_schema(connection, schema=self._schema)
            except DATABASE_ERRORS as exc:
                raise ReadFailedError(f"the read tables' database did not answer: {reason_of(exc)}") from exc
            self._schema_checked = True

    async def _event_by_id(self, thread_id: str, event_id: str) -> Record | None:
        records = await self._records(
            select(*RECORD_COLUMNS).where(_e.thread_id == thread_id, _e.event_id == event_id)
        )
        return records[0] if records else None

    async def _get_retention(self, thread_id: str) -> dict[str, Any] | None:
        rows = await self._rows(
            select(retention_policies.c.policy).where(retention_policies.c.thread_id == thread_id)
        )
        if not rows:
            return None
        policy: dict[str, Any] = orjson.loads(rows[0][0])
        return policy

    async def _thread_ids(self, after: str | None, limit: int) -> list[str]:
        statement = select(thread_counters.c.thread_id).order_by(thread_counters.c.thread_id).limit(limit)
        if after is not None:
            statement = statement.where(thread_counters.c.thread_id > after)
        return [thread_id for (thread_id,) in await self._rows(statement)]

    async def _summaries(self, thread_id: str) -> list[Summary]:
        rows = await self._rows(
            select(_e.seq, _e.run_id, _e.category, _e.created_at)
            .where(_e.thread_id == thread_id)
            .order_by(_e.seq.asc())
        )
        # SQLite returns what it stored, UTC without an offset.
        return [
            Summary(seq, run_id, category, at if at.tzinfo is not None else at.replace(tzinfo=UTC))
            for seq, run_id, category, at in rows
        ]

    async def _user_threads(self, user_id: str) -> Collection[str]:
        rows = await self._rows(select(_e.thread_id).where(_e.user_id == user_id).distinct())
        return [thread_id for (thread_id,) in rows]

    async def _blob_references(self, thread_id: str) -> set[str]:
        rows = await self._rows(
            select(_e["metadata"]).where(
                _e.thread_id == thread_id, _e["metadata"].contains('"content_blob"', autoescape=True)
            )
        )
        return {address for (text,) in rows if (address := blob_address(orjson.loads(text))) is not None}

    async def _rows(self, statement: Select[Any]) -> list[Any]:
        await self._ready()
        try:
            async with self._engine.connect() as connection:
                return list((await connection.execute(statement)).all())
        except DATABASE_ERRORS as exc:
            raise ReadFailedError(f"reading the read tables failed: {reason_of(exc)}") from exc

    async def _records(self, statement: Select[Any], newest_first: bool = False) -> list[Record]:
        records = [row_to_record(row) for row in await self._rows(statement)]
        if newest_first:
            records.reverse()
        return records

    async def _list_messages(
        self, thread_id: str, limit: int, before_seq: int | None, after_seq: int | None, user_id: str | None
    ) -> list[Record]:
        if limit == 0:
            return []
        messages = select(*RECORD_COLUMNS).where(_e.thread_id == thread_id, IS_MESSAGE)
        statement, newest_first = _page(_scoped(messages, user_id), limit, before_seq, after_seq)
        return await self._records(statement, newest_first)

    async def _list_messages_by_run(
        self,
        thread_id: str,
        run_id: str,
        limit: int,
        before_seq: int | None,
        after_seq: int | None,
        user_id: str | None,
    ) -> list[Record]:
        if limit == 0:
            return []
        messages = select(*RECORD_COLUMNS).where(_e.thread_id == thread_id, _e.run_id == run_id, IS_MESSAGE)
        statement, newest_first = _page(_scoped(messages, user_id), limit, before_seq, after_seq)
        return await self._records(statement, newest_first)

    async def _list_events(
        self,
        thread_id: str,
        run_id: str,
        event_types: Collection[str] | None,
        task_id: str | None,
        after_seq: int | None,
        limit: int,
        user_id: str | None,
    ) -> list[Record]:
        if limit == 0 or (event_types is not None and not event_types):
            return []
        statement = _scoped(
            select(*RECORD_COLUMNS).where(_e.thread_id == thread_id, _e.run_id == run_id), user_id
        )
        if event_types is not None:
            statement = statement.where(_e.event_type.in_(list(event_types)))
        if task_id is not None:
            statement = statement.where(_e.task_id == task_id)
        if after_seq is not None:
            statement = statement.where(_e.seq > after_seq)
        return await self._records(statement.order_by(_e.seq.asc()).limit(limit))

    async def _last_visible_ai_seqs(
        self, thread_id: str, run_ids: Collection[str], user_id: str | None
    ) -> dict[str, int]:
        if not run_ids:
            return {}
        caller = func.coalesce(_e.caller, "")
        statement = _scoped(
            select(_e.run_id, func.max(_e.seq)).where(
                _e.thread_id == thread_id,
                _e.run_id.in_(list(run_ids)),
                IS_MESSAGE,
                _e.event_type.in_(sorted(AI_RESPONSE_EVENT_TYPES)),
                caller.not_like(f"{MIDDLEWARE_CALLER_PREFIX}%"),
            ),
            user_id,
        ).group_by(_e.run_id)
        return {row[0]: row[1] for row in await self._rows(statement)}

    async def _message_seqs(
        self, thread_id: str, identities: Collection[str], user_id: str | None
    ) -> dict[str, int]:
        if not identities:
            return {}
        statement = _scoped(
            select(_e.message_id, func.min(_e.seq)).where(
                _e.thread_id == thread_id, _e.message_id.in_(list(identities))
            ),
            user_id,
        ).group_by(_e.message_id)
        return {row[0]: row[1] for row in await self._rows(statement)}

    async def _count_messages(self, thread_id: str, user_id: str | None) -> int:
        if user_id is None:
            # The counter row, not count(*): constant time however long the thread is.
            statement = select(thread_counters.c.message_count).where(
                thread_counters.c.thread_id == thread_id
            )
        else:
            statement = select(func.count()).where(
                _e.thread_id == thread_id, IS_MESSAGE, _e.user_id == user_id
            )
        rows = await self._rows(statement)
        return int(rows[0][0]) if rows else 0
