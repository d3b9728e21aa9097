"""The sql backend: one service with a database (PostgreSQL through asyncpg, or SQLite).

seq comes from the thread's counter row, reserved with one `INSERT ... ON CONFLICT DO UPDATE ...
RETURNING` in the transaction that inserts the rows: writers of one thread queue on that row and
writers of other threads do not wait at all. Concurrent writes of one store share transactions
(group commit). Reads are `ReadTablesStore`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Final
from urllib.parse import urlencode

import asyncpg
from sqlalchemy import event, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from runevents.errors import UnsupportedDatabaseError
from runevents.events import (
    DEFAULT_MAX_TRACE_CONTENT,
    PreparedEvent,
    Record,
    prepare_event,
    prepare_events,
    to_json,
)
from runevents.lifecycle.blobs import BlobStore
from runevents.lifecycle.offload import offload, offload_sizes
from runevents.masking import mask_secrets
from runevents.names import check_identifier
from runevents.store.opener import StoreUrl
from runevents.tables import writes
from runevents.tables.failures import DATABASE_ERRORS, WriteFailedError, reason_of
from runevents.tables.group_commit import CommitOutcomeUnknown, GroupCommitter
from runevents.tables.query import ReadTablesStore
from runevents.tables.schema import deleted_events, run_events, thread_counters

_c = thread_counters.c
_e = run_events.c


def _json_text(value: Any) -> str:
    return to_json(value).decode()


# libpq's TLS parameters, as a database URL's query may carry them (see runevents.settings).
LIBPQ_TLS: Final = ("sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword", "sslcrl")


# The URL schemes a database URL may have, and the async driver each one runs on.
DRIVERS: Final = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
}
SUPPORTED_DATABASES: Final = "postgresql:// (asyncpg) or sqlite:// (aiosqlite)"


def check_database_url(url: object) -> URL:
    """The parsed URL, with its async driver, of a database runevents can use; else raise."""
    if not isinstance(url, str):
        raise UnsupportedDatabaseError(f"a database URL is a str, got {type(url).__name__}")
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        # SQLAlchemy's message quotes the URL: say what is wrong without it.
        raise UnsupportedDatabaseError(
            f"{mask_secrets(url)!r} is not a database URL; runevents reads {SUPPORTED_DATABASES}"
        ) from exc.__cause__
    driver = DRIVERS.get(parsed.drivername)
    if driver is None:
        raise UnsupportedDatabaseError(
            f"database URL scheme {parsed.drivername + '://'!r} is not supported; runevents reads "
            f"{SUPPORTED_DATABASES}"
        )
    return parsed.set(drivername=driver)


def engine_for(url: str, *, schema: str | None = None, pool_size: int = 8) -> AsyncEngine:
    """An async engine for a PostgreSQL or SQLite URL (`postgresql://` and `sqlite://` get async drivers)."""
    parsed = check_database_url(url)
    options: dict[str, Any] = {}
    if schema is not None:
        options["execution_options"] = {"schema_translate_map": {None: schema}}
    tls = {key: parsed.query[key] for key in LIBPQ_TLS if key in parsed.query}
    if tls and parsed.get_backend_name() == "postgresql":
        # asyncpg reads libpq's TLS parameters from a DSN, not as keywords: hand them over as one
        # (the URL's host, user and database, passed as keywords, take precedence over its empty parts).
        parsed = parsed.difference_update_query(tls)
        options["connect_args"] = {"dsn": "postgresql://?" + urlencode(tls)}
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
        blobs: BlobStore | None = None,
        offload_over: Mapping[str, int] | None = None,
    ) -> None:
        """`blobs`: where contents cut to their preview are kept whole (see `get_full_content`);
        `offload_over`: category -> size in bytes past which its contents are cut and kept there."""
        self._url = url
        self._offload_over = offload_sizes(offload_over, blobs)
        self._blobs = blobs
        self._schema = None if schema is None else check_identifier("schema", schema)
        self._engine = engine_for(url, schema=schema, pool_size=pool_size)
        self._max_trace_content = max_trace_content
        self._dialect = self._engine.dialect.name
        if self._dialect == "postgresql":
            self._listen_dsn = writes.libpq_dsn(self._engine.url)
        self._insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        # SQLite has one writer at a time whatever we do; more flushers would only wait on its lock.
        concurrency = write_concurrency if self._dialect == "postgresql" else 1
        self._write_concurrency = concurrency
        self._writes: GroupCommitter[PreparedEvent, Record] = GroupCommitter(
            self._flush, concurrency=concurrency
        )
        self._write_pool: asyncpg.Pool | None = None
        self._write_pool_lock = asyncio.Lock()
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

    async def put_batch(self, events: Sequence[Mapping[str, Any]]) -> list[Record]:
        """Write many events (of any threads) in one transaction; return their records in input order."""
        prepared = prepare_events(events, max_trace_content=self._max_trace_content)
        if not prepared:
            return []
        await self._ready()
        prepared = await offload(prepared, self._blobs, over=self._offload_over)
        records = await self._writes.submit(prepared)
        self._doorbells.ring({event.thread_id for event in prepared})
        return records

    async def stored_event_ids(self, events: Sequence[PreparedEvent]) -> set[str]:
        """Which of `events`' ids the tables hold, or held until a delete (what a backfill skips)."""
        if not events:
            return set()
        threads = {event.thread_id for event in events}
        ids = {event.event_id for event in events}
        found: set[str] = set()
        for table in (run_events, deleted_events):
            rows = await self._rows(
                select(table.c.event_id).where(table.c.thread_id.in_(threads), table.c.event_id.in_(ids))
            )
            found.update(str(row[0]) for row in rows)
        return found

    async def import_events(self, events: Sequence[PreparedEvent]) -> list[Record]:
        """Write events prepared elsewhere, their ids and times kept, as `put_batch` writes (backfill)."""
        if not events:
            return []
        await self._ready()
        records = await self._writes.submit(events)
        self._doorbells.ring({event.thread_id for event in events})
        return records

    async def _flush(self, groups: list[Sequence[PreparedEvent]]) -> list[list[Record]]:
        flat = [event for group in groups for event in group]
        try:
            if self._dialect == "postgresql":
                records = await self._flush_postgresql(flat)
            else:
                records = await self._flush_sqlite(flat)
        except DATABASE_ERRORS as exc:
            raise WriteFailedError(
                f"writing {len(flat)} events failed and was rolled back, nothing was stored: {reason_of(exc)}"
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
                dsn = writes.libpq_dsn(self._engine.url)
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
                records = await writes.insert_events_postgresql(connection, events, self._schema)
            except BaseException:
                # A connection that died took its transaction with it; the first error is the one to tell.
                with contextlib.suppress(Exception):
                    await transaction.rollback()
                raise
            try:
                await transaction.commit()
            except DATABASE_ERRORS as exc:
                raise CommitOutcomeUnknown(
                    f"the commit of {len(events)} events failed ({reason_of(exc)}); "
                    "they may or may not be stored"
                ) from exc
        return records

    async def _flush_sqlite(self, events: Sequence[PreparedEvent]) -> list[Record]:
        async with self._writer(), self._engine.connect() as connection:
            transaction = await connection.begin()
            try:
                records = await writes.insert_events(connection, events, self._schema)
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

    @contextlib.asynccontextmanager
    async def _transaction(self, what: str) -> AsyncIterator[AsyncConnection]:
        """One write transaction; a database error becomes a `WriteFailedError` naming `what`."""
        try:
            async with self._writer(), self._engine.begin() as connection:
                yield connection
        except DATABASE_ERRORS as exc:
            raise WriteFailedError(f"{what} failed and was rolled back: {reason_of(exc)}") from exc

    async def _put_if_absent(self, event: Mapping[str, Any]) -> tuple[Record, bool]:
        prepared = prepare_event(event, max_trace_content=self._max_trace_content)
        await self._ready()
        (prepared,) = await offload([prepared], self._blobs, over=self._offload_over)
        async with self._transaction(f"put_if_absent on thread {prepared.thread_id!r}") as connection:
            record, created = await writes.put_if_absent(connection, prepared, self._schema)
        if created:
            self._doorbells.ring((prepared.thread_id,))
        return record, created

    async def _delete_thread(self, thread_id: str) -> int:
        await self._ready()
        async with self._transaction(f"delete_by_thread({thread_id!r})") as connection:
            removed = await writes.delete_thread(connection, thread_id)
        self._doorbells.ring((thread_id,), deleted=True)
        return removed

    async def _delete_run(self, thread_id: str, run_id: str) -> int:
        await self._ready()
        async with self._transaction(f"delete_by_run({thread_id!r}, {run_id!r})") as connection:
            return await writes.delete_run(connection, thread_id, run_id)

    def _blob_store(self) -> BlobStore | None:
        return self._blobs

    async def _set_retention(self, thread_id: str, policy: dict[str, Any] | None) -> None:
        await self._ready()
        async with self._transaction(f"setting the retention of thread {thread_id!r}") as connection:
            await writes.set_retention(connection, thread_id, policy)

    async def _expire(self, thread_id: str, seqs: list[int]) -> int:
        await self._ready()
        async with self._transaction(f"expiring {len(seqs)} events of thread {thread_id!r}") as connection:
            return await writes.delete_seqs(connection, thread_id, seqs)


def open_url(url: StoreUrl) -> SqlRunEventStore:
    """A sql store for a PostgreSQL or SQLite URL (options: `schema`, `blobs`, libpq's TLS parameters)."""
    schema = url.pop("schema")
    # The TLS parameters stay in the URL the engine reads (see engine_for); anything else is open_store's.
    tls = {key: value for key in LIBPQ_TLS if (value := url.pop(key)) is not None}
    # Not urlunsplit: it folds sqlite:////abs/path (no host) into sqlite://abs/path.
    database_url = url.url.split("?", 1)[0] + (f"?{urlencode(tls)}" if tls else "")
    blobs = url.blobs()
    url.refuse_unknown()
    store = SqlRunEventStore(
        database_url,
        schema=schema,
        max_trace_content=DEFAULT_MAX_TRACE_CONTENT
        if url.max_trace_content is None
        else url.max_trace_content,
    )
    if blobs is not None:
        # Opened once the store is: the blobs table is read through the store's own engine (one pool,
        # disposed with the store). The URL was checked above, before anything was made.
        store._blobs = blobs.open(store.engine)
    return store
