"""The backends the conformance suite runs on, and how a test opens each."""

from __future__ import annotations

import asyncio
import shutil
import threading
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from runevents import deerflow
from runevents.bus.projector import Projector
from runevents.bus.store import BusRunEventStore
from runevents.bus.topic import create_topic
from runevents.deerflow.classes import SQLITE_FILE_NAME
from runevents.deerflow.config import DEFAULT_SCHEMA
from runevents.deerflow.users import Users
from runevents.store import JsonlRunEventStore, MemoryRunEventStore, RunEventStore
from runevents.tables.sql import SqlRunEventStore, engine_for

BUS_PARTITIONS = 3


@dataclass(frozen=True)
class Backend:
    """One backend under test: how to open a store over its storage, and what it can do."""

    name: str
    opener: Callable[..., RunEventStore]
    # Whether a store opened again over the same storage sees what an earlier one wrote.
    persistent: bool
    # What runs beside the stores (the bus backend's projector), stopped once the test is done with them.
    shutdown: Callable[[], None] = lambda: None

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


async def _empty_tables(url: str, schema: str = "public") -> None:
    engine = engine_for(url)
    tables = ", ".join(
        f"{schema}.{table}"
        for table in ("run_events", "thread_counters", "projection_offsets", "op_results", "dead_letters")
    )
    try:
        async with engine.begin() as connection:
            await connection.execute(text(f"TRUNCATE {tables}"))
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


class ProjectorThread:
    """A projector running on a thread of its own (its own event loop) while a test runs."""

    def __init__(self, projector: Projector) -> None:
        self._projector = projector
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._main, name="projector", daemon=True)

    def start(self) -> None:
        """Start projecting; return once the projector's loop runs."""
        self._thread.start()
        self._ready.wait(timeout=30)

    def stop(self) -> None:
        """Stop projecting and wait for the projector to leave; raise what it failed with."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=60)
        if self._failure:
            raise self._failure[0]

    def _main(self) -> None:
        async def run() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._ready.set()
            await self._projector.run(self._stop)

        try:
            asyncio.run(run())
        except BaseException as exc:
            self._failure.append(exc)
        finally:
            self._ready.set()


def bus_backend(directory: Path, request: pytest.FixtureRequest) -> Backend:
    """The bus backend: a fresh topic, the shared PostgreSQL database emptied, a projector running."""
    url: str = request.getfixturevalue("migrated_postgres_url")
    bootstrap: str = request.getfixturevalue("kafka_bootstrap")
    topic = f"conformance-{uuid.uuid4().hex[:12]}"
    run_aside(_empty_tables(url))
    run_aside(_create_topic(bootstrap, topic))
    projector = ProjectorThread(Projector(bootstrap, url, topic=topic, partitions=range(BUS_PARTITIONS)))
    projector.start()
    request.addfinalizer(projector.stop)
    options = {"max_trace_content": None, "topic": topic, "poll_interval_s": 0.2}
    return Backend("bus", lambda **o: BusRunEventStore(bootstrap, url, **{**options, **o}), persistent=True)


async def _create_topic(bootstrap: str, topic: str) -> None:
    await create_topic(bootstrap, topic, partitions=BUS_PARTITIONS)


# deer-flow's drop-in classes (runevents.deerflow) over the backends, as a deer-flow deployment
# switched to runevents builds them: no deer-flow importable (so no current user: runevents' own
# scoping), and the DB markers off (they add keys to metadata by design; tests/deerflow covers them).
NO_DEERFLOW = Users(None)


def deerflow_memory_backend(directory: Path, request: pytest.FixtureRequest) -> Backend:
    """deer-flow's `MemoryRunEventStore()`, from the drop-in."""
    return Backend(
        "deerflow+memory", lambda **o: deerflow.MemoryRunEventStore(users=NO_DEERFLOW, **o), persistent=False
    )


def deerflow_jsonl_backend(directory: Path, request: pytest.FixtureRequest) -> Backend:
    """deer-flow's `JsonlRunEventStore(base_dir=...)`, from the drop-in."""
    return Backend(
        "deerflow+jsonl",
        lambda **o: deerflow.JsonlRunEventStore(base_dir=directory, users=NO_DEERFLOW, **o),
        persistent=True,
    )


def _deerflow_db(url: str) -> Callable[..., RunEventStore]:
    """`DbRunEventStore(session_factory)` on deer-flow's engine at `url` (the tables already migrated)."""
    sessions = async_sessionmaker(create_async_engine(url))  # never connected: nothing to dispose

    def open_db(**options: Any) -> RunEventStore:
        options.setdefault("max_trace_content", None)
        return deerflow.DbRunEventStore(
            sessions, migrate=False, content_markers=False, users=NO_DEERFLOW, **options
        )

    return open_db


def deerflow_sqlite_backend(directory: Path, request: pytest.FixtureRequest) -> Backend:
    """deer-flow's DB store on SQLite: runevents' tables in the file beside deer-flow's."""
    template: Path = request.getfixturevalue("migrated_sqlite_template")
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, directory / SQLITE_FILE_NAME)
    url = f"sqlite+aiosqlite:///{directory / 'deerflow.db'}"
    return Backend("deerflow+db-sqlite", _deerflow_db(url), persistent=True)


def deerflow_postgresql_backend(directory: Path, request: pytest.FixtureRequest) -> Backend:
    """deer-flow's DB store on PostgreSQL: runevents' tables in schema `runevents`, emptied first."""
    url: str = request.getfixturevalue("migrated_postgres_url")
    request.getfixturevalue("migrated_deerflow_schema")
    run_aside(_empty_tables(url, schema=DEFAULT_SCHEMA))
    return Backend("deerflow+db-postgresql", _deerflow_db(url), persistent=True)


BACKENDS: dict[str, Callable[[Path, pytest.FixtureRequest], Backend]] = {
    "memory": memory_backend,
    "jsonl": jsonl_backend,
    "sql+sqlite": sqlite_backend,
    "sql+postgresql": postgresql_backend,
    "bus": bus_backend,
    "deerflow+memory": deerflow_memory_backend,
    "deerflow+jsonl": deerflow_jsonl_backend,
    "deerflow+db-sqlite": deerflow_sqlite_backend,
    "deerflow+db-postgresql": deerflow_postgresql_backend,
}
