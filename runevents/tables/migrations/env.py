"""Alembic's entry point for the read tables: runs the revisions over an async engine.

`runevents.tables.migrate.alembic_config` passes the database as `config.attributes["url"]` and an
optional PostgreSQL schema as `config.attributes["schema"]`; an alembic.ini's `sqlalchemy.url` works too.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.schema import CreateSchema

from runevents.tables.schema import Base
from runevents.tables.sql import engine_for

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL: pass one to runevents.tables.migrate.alembic_config")
    return str(url)


def _schema() -> str | None:
    schema = config.attributes.get("schema")
    return None if schema is None else str(schema)


def run_migrations_offline() -> None:
    """Write the revisions' SQL to stdout instead of running it (`alembic upgrade --sql`)."""
    schema = _schema()
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        version_table_schema=schema,
    )
    with context.begin_transaction():
        if schema is not None:
            context.execute(CreateSchema(schema, if_not_exists=True))
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    """Run the pending revisions on one connection, in one transaction."""
    schema = _schema()
    if connection.dialect.name == "postgresql":
        # Many processes may upgrade at once (deer-flow's gateway workers each migrate at startup): one
        # at a time, each looking at the version table only once the one before it has committed.
        connection.execute(text("SELECT pg_advisory_lock(hashtext('runevents db upgrade'))"))
        connection.commit()  # the lock is the session's; Alembic must begin a transaction of its own
    try:
        _migrate(connection, schema)
    finally:
        if connection.dialect.name == "postgresql":
            connection.rollback()  # the lock is the session's: it outlives a failed transaction
            connection.execute(text("SELECT pg_advisory_unlock(hashtext('runevents db upgrade'))"))
            connection.commit()


def _migrate(connection: Connection, schema: str | None) -> None:
    if schema is not None:
        connection.execute(CreateSchema(schema, if_not_exists=True))
        # Committed before Alembic looks: it would take an open transaction for the caller's and not commit.
        connection.commit()
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table_schema=schema,
        # SQLite cannot ALTER most things; later revisions recreate its tables instead ("batch" mode).
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    """Connect with the store's engine factory (the schema maps the tables' None schema) and migrate."""
    engine = engine_for(_url(), schema=_schema())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_async_migrations())
