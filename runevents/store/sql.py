"""The sql backend: one service with a database (PostgreSQL through asyncpg, or SQLite).

seq comes from the thread's counter row, reserved with one `INSERT ... ON CONFLICT DO UPDATE ...
RETURNING` in the transaction that inserts the rows: writers of one thread queue on that row and
writers of other threads do not wait at all. Concurrent writes of one store share transactions
(group commit). Reads are `ReadTablesStore`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Final

import asyncpg
from sqlalchemy import (
    BigInteger,
    MetaData,
    String,
    Table,
    bindparam,
    column,
    delete,
    event,
    func,
    insert,
    select,
    true,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from runevents.errors import RunEventsError
from runevents.events import (
    DEFAULT_MAX_TRACE_CONTENT,
    MESSAGE_CATEGORY,
    PreparedEvent,
    Record,
    make_record,
    message_id_of,
    prepare_event,
    prepare_events,
    to_json,
)
from runevents.store import migrate
from runevents.store.group_commit import CommitOutcomeUnknown, GroupCommitter
from runevents.store.query import RECORD_COLUMNS, ReadTablesStore, row_to_record
from runevents.store.schema import DICT, JSON_STR, LIST, STR, run_events, thread_counters

# Longer message ids are not indexed (a btree entry has a size limit); no real message id is near it.
MAX_INDEXED_MESSAGE_ID: Final = 512
_c = thread_counters.c
_e = run_events.c


# COPY goes to asyncpg directly, so its errors arrive unwrapped by SQLAlchemy.
DATABASE_ERRORS: Final = (DBAPIError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


def _reason(error: BaseException) -> str:
    return str(error.orig if isinstance(error, DBAPIError) else error).splitlines()[0]


class WriteFailedError(RunEventsError):
    """The database refused or lost a write; nothing of it was stored unless the message says otherwise."""


def _json_text(value: Any) -> str:
    return to_json(value).decode()


def engine_for(url: str, *, schema: str | None = None, pool_size: int = 8) -> AsyncEngine:
    """An async engine for a PostgreSQL or SQLite URL (`postgresql://` and `sqlite://` get async drivers)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    elif parsed.drivername == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    options: dict[str, Any] = {}
    if schema is not None:
        options["execution_options"] = {"schema_translate_map": {None: schema}}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            # Every connection to an in-memory SQLite is a new database: share one.
            options["poolclass"] = StaticPool
        engine = create_async_engine(parsed, **options)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(parsed, pool_size=pool_size, max_overflow=pool_size, **options)


def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
    # WAL lets readers go on while one writer commits; the busy timeout lets another process wait.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _content_column(event: PreparedEvent) -> tuple[str, str]:
    content = event.content
    if isinstance(content, str):
        if "\x00" in content:  # PostgreSQL text cannot hold NUL; its JSON text can
            return event.content_json.decode(), JSON_STR
        return content, STR
    return event.content_json.decode(), DICT if isinstance(content, dict) else LIST


def _row(event: PreparedEvent, seq: int) -> tuple[Any, ...]:
    """The `run_events` row of a prepared event at `seq`, its values in `ROW_COLUMNS` order."""
    content, kind = _content_column(event)
    message_id = message_id_of(event.category, event.content)
    if message_id is not None and (len(message_id) > MAX_INDEXED_MESSAGE_ID or "\x00" in message_id):
        message_id = None
    metadata = event.metadata
    task_id = metadata.get("task_id")
    caller = metadata.get("caller")
    # A tuple, not a dict: the write path builds one for every event, and COPY takes tuples.
    return (
        event.thread_id,
        seq,
        event.run_id,
        event.event_id,
        event.event_type,
        event.category,
        content,
        kind,
        event.metadata_json.decode(),
        # Text columns cannot hold NUL; a filter on an id with NUL in it is not a use anyone has.
        task_id if isinstance(task_id, str) and "\x00" not in task_id else None,
        None if caller is None else str(caller).replace("\x00", ""),
        event.created,
        event.user_id,
        message_id,
    )


ROW_COLUMNS: Final = tuple(column.name for column in run_events.columns)

# On PostgreSQL the counters of any number of threads advance in one statement of fixed text
# (arrays, not a VALUES row per thread), so SQLAlchemy compiles it once, not at every flush.
_counts = (
    func.unnest(
        bindparam("thread_ids", type_=postgresql.ARRAY(String)),
        bindparam("sizes", type_=postgresql.ARRAY(BigInteger)),
        bindparam("messages", type_=postgresql.ARRAY(BigInteger)),
    )
    .table_valued(column("thread_id", String), column("size", BigInteger), column("messages", BigInteger))
    .render_derived()
)


def _advance_counters(statement: Any, table: Table) -> Any:
    return statement.on_conflict_do_update(
        index_elements=[table.c.thread_id],
        set_={
            "last_seq": table.c.last_seq + statement.excluded.last_seq,
            "event_count": table.c.event_count + statement.excluded.event_count,
            "message_count": table.c.message_count + statement.excluded.message_count,
        },
    ).returning(table.c.thread_id, table.c.last_seq)


_COUNTER_COLUMNS: Final = ["thread_id", "last_seq", "event_count", "message_count"]


@functools.cache
def advance_counters_sql(schema: str | None) -> str:
    """The PostgreSQL text advancing threads' counters: arrays $1 of ids, $2 of sizes, $3 of messages."""
    # The write path runs it on a raw asyncpg connection, so the schema is rendered in, not mapped.
    table = thread_counters if schema is None else thread_counters.to_metadata(MetaData(), schema=schema)
    statement = _advance_counters(
        postgresql.insert(table).from_select(
            _COUNTER_COLUMNS,
            # WHERE true: without it PostgreSQL may read ON CONFLICT as the ON of a join.
            select(_counts.c.thread_id, _counts.c.size, _counts.c.size, _counts.c.messages).where(true()),
        ),
        table,
    )
    return str(statement.compile(dialect=postgresql.asyncpg.dialect()))  # type: ignore[no-untyped-call]


def _thread_counts(events: Sequence[PreparedEvent]) -> tuple[list[str], Counter[str], Counter[str]]:
    """The events' thread ids in lock order, and per thread its number of events and of messages."""
    sizes = Counter(event.thread_id for event in events)
    messages = Counter(event.thread_id for event in events if event.category == MESSAGE_CATEGORY)
    # One lock order for every writer (sorted thread ids), so two batches cannot deadlock.
    return sorted(sizes), sizes, messages


def _number(
    events: Sequence[PreparedEvent], next_seq: dict[str, int]
) -> tuple[list[Record], list[tuple[Any, ...]]]:
    """The records and rows of `events`, numbered on from each thread's first reserved seq."""
    records = []
    rows = []
    for prepared in events:
        seq = next_seq[prepared.thread_id]
        next_seq[prepared.thread_id] = seq + 1
        records.append(make_record(prepared, seq))
        rows.append(_row(prepared, seq))
    return records, rows


class SqlRunEventStore(ReadTablesStore):
    """A `RunEventStore` in the read tables of one PostgreSQL or SQLite database."""

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        max_trace_content: int | None = DEFAULT_MAX_TRACE_CONTENT,
        pool_size: int = 8,
        write_concurrency: int = 4,
    ) -> None:
        self._url = url
        self._schema = schema
        self._engine = engine_for(url, schema=schema, pool_size=pool_size)
        self._max_trace_content = max_trace_content
        self._dialect = self._engine.dialect.name
        self._insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        # SQLite has one writer at a time whatever we do; more flushers would only wait on its lock.
        concurrency = write_concurrency if self._dialect == "postgresql" else 1
        self._write_concurrency = concurrency
        self._writes: GroupCommitter[PreparedEvent, Record] = GroupCommitter(
            self._flush, concurrency=concurrency
        )
        self._write_pool: asyncpg.Pool | None = None
        self._write_pool_lock = asyncio.Lock()
        self._advance_counters = advance_counters_sql(schema)
        self._schema_checked = False
        # SQLite takes one writer at a time; waiting here beats its busy errors between our own writers.
        self._sqlite_writer = asyncio.Lock() if self._dialect == "sqlite" else None

    @property
    def engine(self) -> AsyncEngine:
        """The engine the store reads and writes through."""
        return self._engine

    async def close(self) -> None:
        """Finish submitted writes and close the connection pool."""
        await self._writes.close()
        if self._write_pool is not None:
            await self._write_pool.close()
        await self._engine.dispose()

    def _writer(self) -> contextlib.AbstractAsyncContextManager[Any]:
        return self._sqlite_writer if self._sqlite_writer is not None else contextlib.nullcontext()

    async def _ready(self) -> None:
        """Refuse to run on read tables older than this version needs."""
        if self._schema_checked:
            return
        async with self._engine.connect() as connection:
            await migrate.check_schema(connection, schema=self._schema)
        self._schema_checked = True

    async def put_batch(self, events: Sequence[Mapping[str, Any]]) -> list[Record]:
        """Write many events (of any threads) in one transaction; return their records in input order."""
        prepared = prepare_events(events, max_trace_content=self._max_trace_content)
        if not prepared:
            return []
        await self._ready()
        return await self._writes.submit(prepared)

    async def _flush(self, groups: list[Sequence[PreparedEvent]]) -> list[list[Record]]:
        flat = [event for group in groups for event in group]
        try:
            if self._dialect == "postgresql":
                records = await self._flush_postgresql(flat)
            else:
                records = await self._flush_sqlite(flat)
        except DATABASE_ERRORS as exc:
            raise WriteFailedError(
                f"writing {len(flat)} events failed and was rolled back, nothing was stored: {_reason(exc)}"
            ) from exc
        results: list[list[Record]] = []
        start = 0
        for group in groups:
            results.append(records[start : start + len(group)])
            start += len(group)
        return results

    async def _writer_pool(self) -> asyncpg.Pool:
        """The asyncpg pool of the PostgreSQL write path, opened on first use."""
        async with self._write_pool_lock:
            if self._write_pool is None:
                dsn = self._engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
                self._write_pool = await asyncpg.create_pool(
                    dsn, min_size=0, max_size=self._write_concurrency
                )
        return self._write_pool

    async def _flush_postgresql(self, events: Sequence[PreparedEvent]) -> list[Record]:
        # Straight on asyncpg: a flush is a handful of round trips, and SQLAlchemy's per-call
        # work (checkout, greenlet hop, result wrapping) cost more than the database's.
        pool = await self._writer_pool()
        async with pool.acquire() as connection:
            transaction = connection.transaction()
            await transaction.start()
            try:
                records = await self._insert_events_postgresql(connection, events)
            except BaseException:
                # A connection that died took its transaction with it; the first error is the one to tell.
                with contextlib.suppress(Exception):
                    await transaction.rollback()
                raise
            try:
                await transaction.commit()
            except DATABASE_ERRORS as exc:
                raise CommitOutcomeUnknown(
                    f"the commit of {len(events)} events failed ({_reason(exc)}); "
                    "they may or may not be stored"
                ) from exc
        return records

    async def _flush_sqlite(self, events: Sequence[PreparedEvent]) -> list[Record]:
        async with self._writer(), self._engine.connect() as connection:
            transaction = await connection.begin()
            try:
                records = await self._insert_events(connection, events)
            except BaseException:
                with contextlib.suppress(Exception):
                    await transaction.rollback()
                raise
            try:
                await transaction.commit()
            except DBAPIError as exc:
                raise CommitOutcomeUnknown(
                    f"the commit of {len(events)} events failed ({exc.orig}); they may or may not be stored"
                ) from exc
        return records

    async def _insert_events(
        self, connection: AsyncConnection, events: Sequence[PreparedEvent]
    ) -> list[Record]:
        """Reserve seqs for `events` and insert their rows in the connection's transaction."""
        if self._dialect == "postgresql":
            raw = await connection.get_raw_connection()
            return await self._insert_events_postgresql(raw.driver_connection, events)
        thread_ids, sizes, messages = _thread_counts(events)
        counters = [
            {"thread_id": t, "last_seq": sizes[t], "event_count": sizes[t], "message_count": messages[t]}
            for t in thread_ids
        ]
        reserved = await connection.execute(
            _advance_counters(sqlite.insert(thread_counters).values(counters), thread_counters)
        )
        records, rows = _number(
            events, {thread_id: last_seq - sizes[thread_id] + 1 for thread_id, last_seq in reserved}
        )
        await connection.execute(
            insert(run_events), [dict(zip(ROW_COLUMNS, row, strict=True)) for row in rows]
        )
        return records

    async def _insert_events_postgresql(
        self, connection: asyncpg.Connection, events: Sequence[PreparedEvent]
    ) -> list[Record]:
        thread_ids, sizes, messages = _thread_counts(events)
        reserved = await connection.fetch(
            self._advance_counters,
            thread_ids,
            [sizes[t] for t in thread_ids],
            [messages[t] for t in thread_ids],
        )
        records, rows = _number(
            events, {thread_id: last_seq - sizes[thread_id] + 1 for thread_id, last_seq in reserved}
        )
        await self._copy_rows(connection, rows)
        return records

    async def _copy_rows(self, connection: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> None:
        """COPY rows into run_events inside the connection's transaction (asyncpg's binary COPY)."""
        await connection.copy_records_to_table(
            run_events.name, records=rows, columns=ROW_COLUMNS, schema_name=self._schema
        )

    @contextlib.asynccontextmanager
    async def _transaction(self, what: str) -> AsyncIterator[AsyncConnection]:
        """One write transaction; a database error becomes a `WriteFailedError` naming `what`."""
        try:
            async with self._writer(), self._engine.begin() as connection:
                yield connection
        except DATABASE_ERRORS as exc:
            raise WriteFailedError(f"{what} failed and was rolled back: {_reason(exc)}") from exc

    async def _lock_thread(self, connection: AsyncConnection, thread_id: str) -> int | None:
        """Take the thread's counter row for this transaction; None if the thread has none."""
        statement = select(_c.last_seq).where(_c.thread_id == thread_id).with_for_update()
        return (await connection.execute(statement)).scalar()

    async def _put_if_absent(self, event: Mapping[str, Any]) -> tuple[Record, bool]:
        prepared = prepare_event(event, max_trace_content=self._max_trace_content)
        await self._ready()
        async with self._transaction(f"put_if_absent on thread {prepared.thread_id!r}") as connection:
            # Creating the counter row if need be and locking it serializes this check with every
            # writer of the thread; a plain SELECT could let two receipts in.
            lock = self._insert(thread_counters).values(
                thread_id=prepared.thread_id, last_seq=0, event_count=0, message_count=0
            )
            await connection.execute(
                lock.on_conflict_do_update(index_elements=[_c.thread_id], set_={"last_seq": _c.last_seq})
            )
            existing = (
                await connection.execute(
                    select(*RECORD_COLUMNS)
                    .where(
                        _e.thread_id == prepared.thread_id,
                        _e.run_id == prepared.run_id,
                        _e.event_type == prepared.event_type,
                    )
                    .order_by(_e.seq)
                    .limit(1)
                )
            ).first()
            if existing is not None:
                return row_to_record(existing), False
            (record,) = await self._insert_events(connection, [prepared])
            return record, True

    async def delete_by_thread(self, thread_id: str) -> int:
        """Delete a thread's records and reset its seq; return how many were removed."""
        await self._ready()
        async with self._transaction(f"delete_by_thread({thread_id!r})") as connection:
            if await self._lock_thread(connection, thread_id) is None:
                return 0
            removed = await connection.execute(delete(run_events).where(_e.thread_id == thread_id))
            await connection.execute(delete(thread_counters).where(_c.thread_id == thread_id))
            return int(removed.rowcount)

    async def delete_by_run(self, thread_id: str, run_id: str) -> int:
        """Delete a run's records (the thread's seq goes on); return how many were removed."""
        await self._ready()
        async with self._transaction(f"delete_by_run({thread_id!r}, {run_id!r})") as connection:
            if await self._lock_thread(connection, thread_id) is None:
                return 0
            removed = await connection.execute(
                delete(run_events)
                .where(_e.thread_id == thread_id, _e.run_id == run_id)
                .returning(_e.category)
            )
            categories = [category for (category,) in removed]
            if categories:
                messages = sum(1 for category in categories if category == MESSAGE_CATEGORY)
                await connection.execute(
                    thread_counters.update()
                    .where(_c.thread_id == thread_id)
                    .values(
                        event_count=_c.event_count - len(categories),
                        message_count=_c.message_count - messages,
                    )
                )
            return len(categories)
