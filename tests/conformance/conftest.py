"""Fixtures that run every conformance test once per backend."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from runevents.deerflow.config import DEFAULT_SCHEMA
from runevents.store import RunEventStore
from runevents.tables.migrate import upgrade
from tests.backends.registry import BACKENDS, Backend, run_aside


@pytest.fixture(scope="session")
def migrated_sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file at the newest schema revision, copied for each test that needs one."""
    path = tmp_path_factory.mktemp("sqlite") / "template.sqlite"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def migrated_postgres_url(postgres_url: str) -> str:
    """A database at the newest schema revision on the session's PostgreSQL, shared by the suite."""
    server = make_url(postgres_url)
    name = f"conformance_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        admin = await asyncpg.connect(
            server.set(drivername="postgresql").render_as_string(hide_password=False)
        )
        try:
            await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        finally:
            await admin.close()

    run_aside(create())
    url = server.set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    return url


@pytest.fixture(scope="session")
def migrated_deerflow_schema(migrated_postgres_url: str) -> str:
    """The read tables in schema `runevents` of the suite's database, where deer-flow's DB store puts them."""
    upgrade(migrated_postgres_url, schema=DEFAULT_SCHEMA)
    return DEFAULT_SCHEMA


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """The backend under test, over storage of its own."""
    chosen = BACKENDS[request.param](tmp_path / "store", request)
    yield chosen
    chosen.shutdown()


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[RunEventStore]:
    """A store of the backend under test, closed after the test."""
    opened = backend.open()
    yield opened
    await opened.close()
