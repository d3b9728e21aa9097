"""The local PostgreSQL cluster the dev stack and the tests run, and the per-test database fixture."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from runevents.devstack.postgres import LocalPostgres
from tests.conftest import service_directory


def plain_dsn(url: str) -> str:
    """A SQLAlchemy asyncpg URL as the DSN asyncpg.connect takes."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def port_is_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:`port`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def owner_uid(pid: int) -> int:
    """The user id a process runs as (Linux: the owner of its /proc entry)."""
    return Path(f"/proc/{pid}").stat().st_uid


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A data directory of the test's own, removed afterwards.

    Not under pytest's basetemp: another pytest session starting meanwhile takes the traversal bits off
    `pytest-of-<user>`, and the server user (when the tests run as root) could no longer reach its data.
    """
    with service_directory("local-postgres") as directory:
        yield directory / "cluster"


async def test_local_cluster_serves_queries_as_an_unprivileged_user_and_stops(data_dir: Path) -> None:
    server = LocalPostgres(data_dir)
    await asyncio.to_thread(server.start)
    try:
        await asyncio.to_thread(server.start)  # a second start is a no-op
        assert server.url() == f"postgresql+asyncpg://postgres@127.0.0.1:{server.port}/postgres"
        connection = await asyncpg.connect(plain_dsn(server.url()))
        try:
            version = await connection.fetchval("select version()")
            assert version.startswith("PostgreSQL ")
            await connection.execute("create table notes (id int primary key, body text not null)")
            await connection.executemany(
                "insert into notes values ($1, $2)", [(1, "first"), (2, "zweite \u2028 ∂")]
            )
            rows = await connection.fetch("select id, body from notes order by id")
            assert [tuple(row) for row in rows] == [(1, "first"), (2, "zweite \u2028 ∂")]
            assert await connection.fetchval("select current_setting('data_directory')") == str(
                data_dir.resolve()
            )
            assert await connection.fetchval("select current_setting('fsync')") == "off"
        finally:
            await connection.close()

        postmaster_pid = int((data_dir / "postmaster.pid").read_text().split()[0])
        uid = owner_uid(postmaster_pid)
        assert uid != 0
        if os.geteuid() != 0:
            assert uid == os.geteuid()

        database_url = await asyncio.to_thread(server.create_database, "made by createdb")
        connection = await asyncpg.connect(plain_dsn(database_url).replace(" ", "%20"))
        try:
            assert await connection.fetchval("select current_database()") == "made by createdb"
        finally:
            await connection.close()
    finally:
        await asyncio.to_thread(server.stop)

    assert not port_is_open(server.port)
    assert not (data_dir / "postmaster.pid").exists()
    server.stop()  # a second stop is a no-op


def test_a_failed_start_reports_the_server_log(data_dir: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = LocalPostgres(data_dir, port=taken.getsockname()[1])
        with pytest.raises(RuntimeError, match="could not bind"):
            server.start()


databases_seen: list[str] = []


@pytest.mark.parametrize("turn", ["first", "second"])
async def test_each_test_gets_an_empty_database_of_its_own(pg_database: str, turn: str) -> None:
    connection = await asyncpg.connect(plain_dsn(pg_database))
    try:
        tables = await connection.fetchval(
            "select count(*) from pg_tables where schemaname not in ('pg_catalog', 'information_schema')"
        )
        assert tables == 0
        # Left behind on purpose: the other turn must not see it.
        await connection.execute("create table left_behind (turn text)")
        await connection.execute("insert into left_behind values ($1)", turn)
        name = await connection.fetchval("select current_database()")
    finally:
        await connection.close()
    assert name not in databases_seen
    databases_seen.append(name)
