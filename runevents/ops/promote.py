"""Promote and drop: which projection readers see, switched in one transaction.

Readers do not name a projection's schema; they read a serving schema (`serving` unless told),
whose views each select everything from one projection's table of the same name. Promoting a
projection replaces every view in one transaction, so a reader sees all of the old projection or
all of the new, never a mix; `promotions` in the serving schema records each switch, and its
latest row names the projection served (the bus store's writers wait on that projection's offsets).

A projection is promoted only once it has caught up (its lag, summed over the topic's partitions,
at most `max_lag` records), and only one that is not served can be dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    MetaData,
    Table,
    Text,
    func,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from runevents.bus.names import DEFAULT_PROJECTION, DEFAULT_TOPIC
from runevents.bus.topic import TopicMissingError, log_offsets
from runevents.errors import RunEventsError
from runevents.names import check_identifier, check_topic
from runevents.ops.replay import stored_offsets
from runevents.tables import migrate
from runevents.tables.schema import (
    dead_letters,
    deleted_events,
    op_results,
    projection_offsets,
    retention_policies,
    run_events,
    thread_counters,
)
from runevents.tables.sql import engine_for
from runevents.tables.writes import qualified

DEFAULT_SERVING: Final = "serving"
DEFAULT_MAX_LAG: Final = 10_000
# The tables a serving schema shows, as views of the same names; projection_offsets shows only the
# served projection's rows, so a writer polling it needs no projection name.
SERVED: Final = (run_events, thread_counters, op_results, deleted_events, dead_letters, retention_policies)
VERSION_TABLE: Final = "alembic_version"

promotions = Table(
    "promotions",
    MetaData(),
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("projection", Text, nullable=False),
    Column("projection_schema", Text, nullable=False),
    Column("topic", Text, nullable=False),
    Column("lag", BigInteger, nullable=False, comment="records behind the log's end when promoted"),
    Column("promoted_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("promoted_by", Text, nullable=False, server_default=text("current_user")),
)
_p = promotions.c


class PromoteError(RunEventsError):
    """A promotion or a drop that cannot be carried out; the message says why."""


@dataclass(frozen=True, slots=True)
class Promotion:
    """One switch of the serving schema: which projection it served from then on, and when."""

    projection: str
    schema: str
    topic: str
    lag: int
    promoted_at: datetime
    promoted_by: str


def projection_schema(projection: str, schema: str | None) -> str:
    """Where a projection's tables are: `schema` if given, else `public` for the live one, else its name."""
    if schema is not None:
        return schema
    return "public" if projection == DEFAULT_PROJECTION else projection


def _quoted(name: str) -> str:
    # Names are checked identifiers; quoting keeps keywords (a schema called "user") usable.
    return f'"{name}"'


async def _relation_kind(connection: AsyncConnection, schema: str, name: str) -> str | None:
    """`r` for a table, `v` for a view, None if `schema.name` does not exist."""
    found = await connection.execute(
        text(
            "SELECT c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = :schema AND c.relname = :name"
        ),
        {"schema": schema, "name": name},
    )
    kind = found.scalar()
    return None if kind is None else str(kind)


async def serving_now(connection: AsyncConnection, serving: str) -> Promotion | None:
    """The latest promotion in the `serving` schema, or None if nothing was ever promoted there."""
    if await _relation_kind(connection, serving, promotions.name) is None:
        return None
    table = promotions.to_metadata(MetaData(), schema=serving)
    row = (await connection.execute(select(table).order_by(table.c.id.desc()).limit(1))).first()
    if row is None:
        return None
    return Promotion(
        row.projection, row.projection_schema, row.topic, row.lag, row.promoted_at, row.promoted_by
    )


async def history(database_url: str, serving: str = DEFAULT_SERVING) -> list[Promotion]:
    """Every promotion in the `serving` schema, oldest first."""
    check_identifier("serving schema", serving)
    engine = engine_for(database_url)
    try:
        async with engine.connect() as connection:
            if await _relation_kind(connection, serving, promotions.name) is None:
                return []
            table = promotions.to_metadata(MetaData(), schema=serving)
            rows = await connection.execute(select(table).order_by(table.c.id))
            return [
                Promotion(r.projection, r.projection_schema, r.topic, r.lag, r.promoted_at, r.promoted_by)
                for r in rows
            ]
    finally:
        await engine.dispose()


async def lag_of(
    bootstrap_servers: str,
    database_url: str,
    projection: str,
    schema: str,
    topic: str,
    client_options: Mapping[str, Any] | None = None,
) -> int:
    """How many records of `topic` the projection has not applied yet, over every partition."""
    try:
        ends = await log_offsets(bootstrap_servers, topic, "end", client_options=client_options)
    except TopicMissingError as error:
        raise PromoteError(str(error)) from None
    reached = await stored_offsets(database_url, schema, projection, topic)
    return sum(max(0, end - reached.get(partition, 0)) for partition, end in ends.items())


async def promote(
    bootstrap_servers: str,
    database_url: str,
    projection: str,
    *,
    schema: str | None = None,
    serving: str = DEFAULT_SERVING,
    topic: str = DEFAULT_TOPIC,
    max_lag: int = DEFAULT_MAX_LAG,
    client_options: Mapping[str, Any] | None = None,
) -> Promotion:
    """Point every view of the `serving` schema at `projection`'s tables, in one transaction."""
    check_identifier("projection", projection)
    schema = check_identifier("schema", projection_schema(projection, schema))
    check_identifier("serving schema", serving)
    check_topic(topic)
    if serving == schema:
        raise PromoteError(f"the serving schema {serving!r} cannot be the projection's own schema")
    engine = engine_for(database_url)
    try:
        async with engine.begin() as connection:
            await _check_promotable(connection, projection, schema, serving, topic)
            lag = await lag_of(bootstrap_servers, database_url, projection, schema, topic, client_options)
            if lag > max_lag:
                raise PromoteError(
                    f"projection {projection!r} is {lag:,} records behind topic {topic!r} (at most "
                    f"{max_lag:,} allowed): let it catch up (`runevents project --projection {projection} "
                    f"--schema {schema}`) or raise --max-lag"
                )
            await _switch(connection, projection, schema, serving, topic, lag)
            promoted = await serving_now(connection, serving)
    finally:
        await engine.dispose()
    assert promoted is not None  # written by this transaction
    return promoted


async def _check_promotable(
    connection: AsyncConnection,
    projection: str,
    schema: str,
    serving: str,
    topic: str,
) -> None:
    # One promotion of a serving schema at a time: a second one waits, then sees the first's result.
    await connection.execute(
        text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"runevents.promote.{serving}"}
    )
    if await _relation_kind(connection, serving, run_events.name) == "r":
        raise PromoteError(f"schema {serving!r} holds a projection's tables; a serving schema holds views")
    if await _relation_kind(connection, schema, run_events.name) != "r":
        raise PromoteError(f"schema {schema!r} has no read tables (replay into it first)")
    revision = await migrate.current_revision(connection, schema=schema)
    if revision != migrate.head_revision():
        raise PromoteError(
            f"the tables in schema {schema!r} are at revision {revision or 'none'}; this runevents serves "
            f"{migrate.head_revision()}: run `runevents db upgrade URL --schema {schema}` first"
        )
    offsets = projection_offsets.to_metadata(MetaData(), schema=schema).c
    applied = await connection.execute(
        select(func.count()).where(offsets.projection == projection, offsets.topic == topic)
    )
    if not applied.scalar():
        raise PromoteError(
            f"projection {projection!r} has applied nothing of topic {topic!r} in schema {schema!r}"
        )


async def _switch(
    connection: AsyncConnection, projection: str, schema: str, serving: str, topic: str, lag: int
) -> None:
    """Replace the serving schema's views and record the promotion (the caller's transaction)."""
    await connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {_quoted(serving)}"))
    log = promotions.to_metadata(MetaData(), schema=serving)
    await connection.run_sync(lambda sync: log.create(sync, checkfirst=True))
    # Dropped and created, not replaced: CREATE OR REPLACE VIEW refuses a table whose columns changed.
    views = [(qualified(table, serving), qualified(table, schema), "") for table in SERVED]
    views.append(
        (
            qualified(projection_offsets, serving),
            qualified(projection_offsets, schema),
            # A literal, not a parameter: a view's text cannot take one. The name is a checked identifier.
            f" WHERE projection = '{projection}'",
        )
    )
    views.append((f"{_quoted(serving)}.{VERSION_TABLE}", f"{_quoted(schema)}.{VERSION_TABLE}", ""))
    for view, source, where in views:
        await connection.execute(text(f"DROP VIEW IF EXISTS {view}"))
        await connection.execute(text(f"CREATE VIEW {view} AS SELECT * FROM {source}{where}"))
    await connection.execute(
        log.insert().values(projection=projection, projection_schema=schema, topic=topic, lag=lag)
    )


async def drop(
    database_url: str, projection: str, *, schema: str | None = None, serving: str = DEFAULT_SERVING
) -> None:
    """Drop a projection that is not served: its schema and everything in it."""
    check_identifier("projection", projection)
    schema = check_identifier("schema", projection_schema(projection, schema))
    check_identifier("serving schema", serving)
    if schema == "public":
        raise PromoteError(
            "the projection's tables are in schema 'public', which holds more than them: drop them by hand"
        )
    engine = engine_for(database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"runevents.promote.{serving}"}
            )
            served = await serving_now(connection, serving)
            if served is not None and served.schema == schema:
                raise PromoteError(
                    f"projection {served.projection!r} in schema {schema!r} is served by {serving!r}: "
                    "promote another one first"
                )
            if await _relation_kind(connection, schema, projection_offsets.name) != "r":
                raise PromoteError(f"schema {schema!r} holds no projection")
            offsets = projection_offsets.to_metadata(MetaData(), schema=schema).c
            found = await connection.execute(select(func.count()).where(offsets.projection == projection))
            if not found.scalar():
                raise PromoteError(f"schema {schema!r} holds no projection named {projection!r}")
            # DROP SCHEMA ... CASCADE would take views elsewhere with it (another serving schema's).
            users = await connection.execute(
                text(
                    "SELECT DISTINCT view_schema || '.' || view_name "
                    "FROM information_schema.view_table_usage "
                    "WHERE table_schema = :schema AND view_schema <> :schema ORDER BY 1"
                ),
                {"schema": schema},
            )
            dependent = list(users.scalars())
            if dependent:
                raise PromoteError(
                    f"views outside schema {schema!r} read its tables ({', '.join(dependent)}): "
                    "promote another projection there first"
                )
            await connection.execute(text(f"DROP SCHEMA {_quoted(schema)} CASCADE"))
    finally:
        await engine.dispose()
