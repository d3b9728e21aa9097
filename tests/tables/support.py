"""Helpers and fixtures of the sql backend's own tests."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from runevents.tables import writes
from runevents.tables.migrate import upgrade_async
from runevents.tables.sql import SqlRunEventStore

Record = dict[str, Any]

PROCESSES = 4
COROUTINES = 8
SHARED_THREADS = [f"shared-{i:02d}" for i in range(20)]
PUTS_PER_WRITER = 25
BATCHES_PER_WRITER = 3
BATCH_SIZE = 4


def make_event(
    thread_id: str = "t1",
    run_id: str = "r1",
    n: int = 0,
    *,
    category: str = "message",
    **extra: Any,
) -> dict[str, Any]:
    """A message (with a message id) or a trace event with distinct content."""
    if category == "message":
        content: Any = {"id": f"m-{thread_id}-{run_id}-{n}", "type": "ai", "content": f"hello {n}"}
        event_type = "llm.ai.response"
    else:
        content = f"trace {thread_id} {run_id} {n}"
        event_type = "llm.start"
    return {
        "thread_id": thread_id,
        "run_id": run_id,
        "event_type": event_type,
        "category": category,
        "content": content,
        **extra,
    }


def libpq_dsn(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL as the plain postgresql:// DSN asyncpg.connect takes."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@asynccontextmanager
async def pg_connection(url: str) -> AsyncIterator[asyncpg.Connection]:
    """A raw asyncpg connection beside the store's pool, closed on the way out."""
    connection = await asyncpg.connect(libpq_dsn(url))
    try:
        yield connection
    finally:
        await connection.close()


@asynccontextmanager
async def sql_store(url: str, **options: Any) -> AsyncIterator[SqlRunEventStore]:
    """A sql store, closed on the way out."""
    store = SqlRunEventStore(url, **options)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty, unmigrated database: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'events.db'}"
    return str(request.getfixturevalue("pg_database"))


@pytest.fixture
async def migrated_url(database_url: str) -> str:
    """`database_url` upgraded to the newest revision."""
    await upgrade_async(database_url)
    return database_url


@pytest.fixture
async def migrated_pg(pg_database: str) -> str:
    """A fresh PostgreSQL database upgraded to the newest revision."""
    await upgrade_async(pg_database)
    return pg_database


async def fetch_all(store: SqlRunEventStore, query: str, **params: Any) -> list[Any]:
    """Rows of a raw query through the store's own engine (works on both dialects)."""
    async with store.engine.connect() as connection:
        return list((await connection.execute(text(query), params)).all())


async def thread_state(store: SqlRunEventStore) -> dict[str, dict[str, Any]]:
    """Per thread: the seqs of its rows, its message rows, and its counter row (None if it has none)."""
    state: dict[str, dict[str, Any]] = defaultdict(lambda: {"seqs": [], "messages": 0, "counter": None})
    for thread_id, seq, category in await fetch_all(
        store, "SELECT thread_id, seq, category FROM run_events ORDER BY thread_id, seq"
    ):
        state[thread_id]["seqs"].append(seq)
        state[thread_id]["messages"] += category == "message"
    for thread_id, last_seq, event_count, message_count in await fetch_all(
        store, "SELECT thread_id, last_seq, event_count, message_count FROM thread_counters"
    ):
        state[thread_id]["counter"] = (last_seq, event_count, message_count)
    return dict(state)


def insert_counter(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the writes of rows into run_events (COPYs on PostgreSQL): one entry a write, its row count."""
    inserts: list[int] = []
    copy_rows = writes.copy_rows

    async def counting(connection: Any, rows: list[tuple[Any, ...]], schema: str | None) -> None:
        inserts.append(len(rows))
        await copy_rows(connection, rows, schema)

    monkeypatch.setattr(writes, "copy_rows", counting)
    return inserts
