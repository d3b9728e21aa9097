"""The backends the conformance suite runs on, and how a test opens each."""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from runevents.store import JsonlRunEventStore, MemoryRunEventStore, RunEventStore
from runevents.store.sql import SqlRunEventStore, engine_for


@dataclass(frozen=True)
class Backend:
    """One backend under test: how to open a store over its storage, and what it can do."""

    name: str
    opener: Callable[..., RunEventStore]
    # Whether a store opened again over the same storage sees what an earlier one wrote.
    persistent: bool

    def open(self, **options: Any) -> RunEventStore:
        """A new store object over this backend's storage (options: `max_trace_content`)."""
        return self.opener(**options)


def run_aside(work: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine to its end on a thread of its own (callers may be inside an event loop)."""
    failure: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(work)
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


async def _empty_tables(url: str) -> None:
    engine = engine_for(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("TRUNCATE run_events, thread_counters"))
    finally:
        await engine.dispose()


def memory_backend(directory: Path, request: pytest.FixtureRequest) -> Backend:
    """The memory backend: every open is a new, empty store."""
    return Backend("memory", lambda **options: MemoryRunEventStore(**options), persistent=False)


def jsonl_backend(directory: Path, request: pytest.FixtureRequest) -> Backend:
    """The JSONL backend over one directory: every open sees what earlier ones wrote."""
    return Backend("jsonl", lambda **options: JsonlRunEventStore(directory, **options), persistent=True)


def sqlite_backend(directory: Path, request: pytest.FixtureRequest) -> Backend:
    """The sql backend on a SQLite file copied from the session's migrated template."""
    template: Path = request.getfixturevalue("migrated_sqlite_template")
    directory.mkdir(parents=True, exist_ok=True)
    database = directory / "events.sqlite"
    shutil.copyfile(template, database)
    url = f"sqlite+aiosqlite:///{database}"
    options = {"max_trace_content": None}
    return Backend("sql+sqlite", lambda **o: SqlRunEventStore(url, **{**options, **o}), persistent=True)


def postgresql_backend(directory: Path, request: pytest.FixtureRequest) -> Backend:
    """The sql backend on the session's migrated PostgreSQL database, emptied first."""
    url: str = request.getfixturevalue("migrated_postgres_url")
    run_aside(_empty_tables(url))
    options = {"max_trace_content": None}
    return Backend("sql+postgresql", lambda **o: SqlRunEventStore(url, **{**options, **o}), persistent=True)


BACKENDS: dict[str, Callable[[Path, pytest.FixtureRequest], Backend]] = {
    "memory": memory_backend,
    "jsonl": jsonl_backend,
    "sql+sqlite": sqlite_backend,
    "sql+postgresql": postgresql_backend,
}
