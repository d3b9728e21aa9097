"""The read tables' Alembic migrations, on a SQLite file and on PostgreSQL, and `runevents db upgrade`."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import insert, inspect, select, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection
from typer.testing import CliRunner

from runevents.cli import app
from runevents.errors import SchemaOutdatedError
from runevents.tables import migrate
from runevents.tables.schema import Base, thread_counters
from runevents.tables.sql import engine_for

HEAD = "0006_thread_keys"
TABLES = {
    "run_events",
    "thread_counters",
    "projection_offsets",
    "op_results",
    "deleted_events",
    "dead_letters",
    "token_usage_calls",
    "token_usage_offsets",
    "retention_policies",
    "blobs",
    "thread_keys",
}
PARTIAL_INDEXES = {
    "ix_run_events_messages",
    "ix_run_events_user_messages",
    "ix_run_events_thread_id_message_id",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'read.db'}"
    return str(request.getfixturevalue("pg_database"))


@asynccontextmanager
async def connect(url: str, schema: str | None = None) -> AsyncIterator[AsyncConnection]:
    """One connection through the store's engine factory, disposed of afterwards."""
    engine = engine_for(url, schema=schema)
    try:
        async with engine.connect() as connection:
            yield connection
    finally:
        await engine.dispose()


async def downgrade(url: str, schema: str | None = None) -> None:
    """Downgrade to base, in a worker thread (env.py runs its own event loop)."""
    await asyncio.to_thread(command.downgrade, migrate.alembic_config(url, schema=schema), "base")


async def tables(url: str, schema: str | None = None) -> set[str]:
    """The names of the tables in `schema` (default: the database's default schema)."""
    async with connect(url) as connection:
        return set(await connection.run_sync(lambda sync: inspect(sync).get_table_names(schema=schema)))


def _differences(connection: Connection) -> list[Any]:
    return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))


async def differences(url: str, schema: str | None = None) -> list[Any]:
    """What autogenerate would change to make the database match the models (nothing, once migrated)."""
    async with connect(url) as connection:
        if schema is not None:
            # Reflection without a schema name reads what the search path shows.
            await connection.execute(text(f'SET search_path TO "{schema}"'))
        return await connection.run_sync(_differences)


def _partial_indexes(connection: Connection, schema: str | None) -> set[str]:
    # Reflected as postgresql_where / sqlite_where: an index built without its WHERE would lack it.
    return {
        str(index["name"])
        for index in inspect(connection).get_indexes("run_events", schema=schema)
        if any(
            key.endswith("_where") and value is not None
            for key, value in index.get("dialect_options", {}).items()
        )
    }


def _check_constraints(connection: Connection, schema: str | None) -> set[str]:
    return {str(check["name"]) for check in inspect(connection).get_check_constraints("run_events", schema)}


async def test_upgrade_creates_exactly_the_tables_and_indexes_of_the_models(database_url):
    await migrate.upgrade_async(database_url)

    assert await differences(database_url) == []
    assert await tables(database_url) == TABLES | {"alembic_version"}
    async with connect(database_url) as connection:
        assert await connection.run_sync(_partial_indexes, None) == PARTIAL_INDEXES
        # Autogenerate does not compare CHECK constraints; look for it by name.
        assert await connection.run_sync(_check_constraints, None) == {"ck_run_events_content_kind"}
        assert await migrate.current_revision(connection) == HEAD == migrate.head_revision()


async def test_check_schema_refuses_an_empty_database_with_the_upgrade_command(database_url):
    async with connect(database_url) as connection:
        with pytest.raises(SchemaOutdatedError) as raised:
            await migrate.check_schema(connection)
    message = str(raised.value)
    assert "\n" not in message
    assert "at revision none" in message
    assert f"needs {HEAD}" in message
    assert "run `runevents db upgrade URL`" in message
    password = make_url(database_url).password
    if password:
        assert password not in message

    await migrate.upgrade_async(database_url)
    async with connect(database_url) as connection:
        await migrate.check_schema(connection)


async def test_check_schema_refuses_a_revision_it_does_not_know(database_url):
    await migrate.upgrade_async(database_url)
    async with connect(database_url) as connection:
        await connection.execute(text("UPDATE alembic_version SET version_num = '0099_from_the_future'"))
        await connection.commit()
        with pytest.raises(SchemaOutdatedError, match="at revision 0099_from_the_future, which this"):
            await migrate.check_schema(connection)


async def test_downgrade_to_base_drops_everything(database_url):
    await migrate.upgrade_async(database_url)
    await downgrade(database_url)

    # Alembic keeps its (now empty) version table; nothing of runevents is left.
    assert await tables(database_url) == {"alembic_version"}
    async with connect(database_url) as connection:
        assert await migrate.current_revision(connection) is None
        with pytest.raises(SchemaOutdatedError, match="at revision none"):
            await migrate.check_schema(connection)


async def test_upgrade_twice_is_a_no_op(database_url):
    await migrate.upgrade_async(database_url)
    async with connect(database_url) as connection:
        row = {"thread_id": "t1", "last_seq": 3, "event_count": 3, "message_count": 1}
        await connection.execute(insert(thread_counters).values(row))
        await connection.commit()

    await migrate.upgrade_async(database_url)

    async with connect(database_url) as connection:
        assert (await connection.execute(select(thread_counters.c.last_seq))).scalars().all() == [3]
        assert await migrate.current_revision(connection) == HEAD
    assert await differences(database_url) == []


async def test_upgrade_from_the_first_revision_keeps_the_rows_and_refuses_until_done(database_url):
    await migrate.upgrade_async(database_url, revision="0001_read_tables")
    async with connect(database_url) as connection:
        row = {"thread_id": "t1", "last_seq": 7, "event_count": 7, "message_count": 2}
        await connection.execute(insert(thread_counters).values(row))
        await connection.commit()
        with pytest.raises(SchemaOutdatedError, match=f"at revision 0001_read_tables.*needs {HEAD}"):
            await migrate.check_schema(connection)

    await migrate.upgrade_async(database_url)

    async with connect(database_url) as connection:
        await migrate.check_schema(connection)
        assert (await connection.execute(select(thread_counters.c.last_seq))).scalars().all() == [7]
    assert await tables(database_url) == TABLES | {"alembic_version"}
    assert await differences(database_url) == []


async def test_upgrade_refuses_to_nest_in_a_running_event_loop(tmp_path):
    with pytest.raises(RuntimeError, match="upgrade_async"):
        migrate.upgrade(f"sqlite+aiosqlite:///{tmp_path / 'read.db'}")


async def test_schema_option_puts_the_tables_in_that_schema(pg_database):
    schema = "tenant_a"
    await migrate.upgrade_async(pg_database, schema=schema)

    assert await tables(pg_database, schema) == TABLES | {"alembic_version"}
    assert await tables(pg_database) == set()
    assert await differences(pg_database, schema) == []
    async with connect(pg_database, schema) as connection:
        assert await connection.run_sync(_partial_indexes, schema) == PARTIAL_INDEXES
        await migrate.check_schema(connection, schema=schema)
    async with connect(pg_database) as connection:
        with pytest.raises(SchemaOutdatedError, match=r"\(schema public\) are at revision none"):
            await migrate.check_schema(connection)

    await migrate.upgrade_async(pg_database, schema=schema)  # the schema exists now: still fine
    await downgrade(pg_database, schema)
    assert await tables(pg_database, schema) == {"alembic_version"}


async def test_check_schema_names_the_schema_in_its_hint(pg_database):
    async with connect(pg_database, "tenant_b") as connection:
        with pytest.raises(SchemaOutdatedError) as raised:
            await migrate.check_schema(connection, schema="tenant_b")
    assert "(schema tenant_b) are at revision none" in str(raised.value)
    assert str(raised.value).endswith("run `runevents db upgrade URL --schema tenant_b`")


def invoke(*args: str) -> tuple[int, list[str]]:
    """Run the CLI: its exit code and output lines (stdout and stderr)."""
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output.splitlines()


async def test_cli_db_upgrade_says_from_and_to(database_url):
    shown = make_url(database_url).render_as_string(hide_password=True)

    code, lines = await asyncio.to_thread(invoke, "db", "upgrade", database_url)
    assert (code, lines) == (0, [f"{shown}: none -> {HEAD}"])

    code, lines = await asyncio.to_thread(invoke, "db", "upgrade", database_url)
    assert (code, lines) == (0, [f"{shown}: {HEAD} -> {HEAD} (already at head, nothing to do)"])
    assert await differences(database_url) == []


async def test_cli_db_upgrade_with_a_schema(pg_database):
    shown = make_url(pg_database).render_as_string(hide_password=True)
    code, lines = await asyncio.to_thread(invoke, "db", "upgrade", pg_database, "--schema", "tenant_c")
    assert (code, lines) == (0, [f"{shown} (schema tenant_c): none -> {HEAD}"])
    assert await tables(pg_database, "tenant_c") == TABLES | {"alembic_version"}


def closed_port() -> int:
    """A local TCP port nothing listens on (it was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["postgresql://bob:s3cret@127.0.0.1:{port}/runs"], "cannot upgrade postgresql://bob:***@127.0.0.1:"),
        (["postgresql+asyncpg://bob:s3cret@127.0.0.1:{port}/runs"], "ConnectionRefusedError"),
        (["sqlite:///{tmp}/no/such/dir/read.db"], "/no/such/dir does not exist"),
        (["postgres//bob:s3cret@host/runs"], "database_url (option --database): expected a database URL"),
        (
            ["mysql://bob:s3cret@127.0.0.1:{port}/runs"],
            "expected a postgresql:// or sqlite:// URL, got mysql://",
        ),
        (["sqlite:///{tmp}/read.db", "--schema", "tenant"], "--schema is for PostgreSQL only"),
    ],
)
def test_cli_db_upgrade_fails_in_one_line(tmp_path, args, expected):
    code, lines = invoke("db", "upgrade", *(arg.format(port=closed_port(), tmp=tmp_path) for arg in args))
    assert code == 1
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    assert expected in lines[0]
    assert "s3cret" not in lines[0]
