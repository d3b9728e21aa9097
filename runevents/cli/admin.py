"""The operator's commands: `project`, `db upgrade`, `topic create`, `schema` and `config`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import Annotated, Final

import typer
from aiokafka.errors import KafkaConnectionError, KafkaError
from alembic.util.exc import CommandError
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from runevents.bus.projector import Projector
from runevents.bus.projector.loop import PartitionsError
from runevents.bus.topic import DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_PARTITIONS, TopicMissingError, create_topic
from runevents.cli.support import (
    CONFIG_FILE,
    DatabaseUrl,
    KafkaServers,
    ProjectionSchema,
    Topic,
    error_line,
    fail,
    failure_line,
    log_to_stderr,
    run_or_fail,
    settings_of,
)
from runevents.errors import RunEventsError, SchemaOutdatedError
from runevents.events import envelope_json_schema_text
from runevents.metrics import serve_metrics
from runevents.names import InvalidNameError
from runevents.settings import Settings, SettingsError, load_settings
from runevents.tables import migrate
from runevents.tables.failures import DATABASE_ERRORS
from runevents.tables.sql import engine_for

STARTUP_CHECK_S: Final = 15.0

db_app = typer.Typer(
    rich_markup_mode="markdown",
    help="The read tables' database: create and upgrade them.",
    no_args_is_help=True,
)
topic_app = typer.Typer(
    rich_markup_mode="markdown", help="The run-events topic: create it.", no_args_is_help=True
)


@db_app.command("upgrade")
def db_upgrade(
    url: Annotated[
        str | None,
        typer.Argument(
            help="postgresql://user@host/db or sqlite:///path/to.db "
            "[setting database_url, env RUNEVENTS_DATABASE_URL]",
            show_default=False,
        ),
    ] = None,
    schema: ProjectionSchema = None,
) -> None:
    """Create the read tables, or upgrade them to the revision this runevents needs.

    Prints one line: the database (without its password) and the revisions it went from and to.
    """
    settings = settings_of(database_url=url, schema_name=schema)
    shown = settings.shown_database() or ""
    if settings.schema_name is not None:
        if make_url(settings.database()).get_backend_name() != "postgresql":
            fail(f"--schema is for PostgreSQL only, not {shown}")
        shown += f" (schema {settings.schema_name})"
    target = make_url(settings.database())
    if target.get_backend_name() == "sqlite" and target.database not in (None, "", ":memory:"):
        # Said here: SQLite's own error ("unable to open database file") does not say which part is wrong.
        folder = Path(target.database).parent
        if not folder.is_dir():
            fail(f"cannot upgrade {shown}: directory {folder} does not exist")
    try:
        before, after = asyncio.run(_db_upgrade(settings.database(), settings.schema_name))
    # ImportError: a driver named in the URL that is not installed.
    except (RunEventsError, SQLAlchemyError, CommandError, OSError, ValueError, ImportError) as error:
        fail(f"cannot upgrade {shown}: {error_line(error)}")
    done = "" if before != after else " (already at head, nothing to do)"
    typer.echo(f"{shown}: {before or 'none'} -> {after}{done}")


async def _db_upgrade(url: str, schema: str | None) -> tuple[str | None, str | None]:
    """Upgrade the read tables to head: the revisions (before, after)."""
    engine = engine_for(url, schema=schema)
    try:
        async with engine.connect() as connection:
            before = await migrate.current_revision(connection, schema=schema)
        await migrate.upgrade_async(url, schema=schema)
        async with engine.connect() as connection:
            after = await migrate.current_revision(connection, schema=schema)
    finally:
        await engine.dispose()
    return before, after


@topic_app.command("create")
def topic_create(
    bootstrap_servers: KafkaServers = None,
    topic: Topic = None,
    partitions: Annotated[
        int, typer.Option(min=1, help="Partitions: the most projectors that can share the work.")
    ] = DEFAULT_PARTITIONS,
    replication_factor: Annotated[int, typer.Option(min=1, help="Copies of each partition.")] = 1,
    max_message_bytes: Annotated[
        int, typer.Option(min=1024, help="The largest record the topic takes (max.message.bytes).")
    ] = DEFAULT_MAX_MESSAGE_BYTES,
) -> None:
    """Create the topic, kept forever (retention.ms=-1): replay and backfill need all of its history.

    A topic that exists already is left as it is (exit 0, and says so).
    """
    settings = settings_of(kafka=bootstrap_servers, topic=topic)
    created = run_or_fail(
        create_topic(
            settings.bootstrap_servers(),
            settings.topic,
            partitions=partitions,
            replication_factor=replication_factor,
            max_message_bytes=max_message_bytes,
            client_options=settings.kafka_options(),
        ),
        settings,
    )
    if not created:
        typer.echo(f"topic {settings.topic!r} exists already at {settings.kafka}: left as it is")
        return
    typer.echo(
        f"created topic {settings.topic!r} at {settings.kafka}: {partitions} partitions, replication "
        f"factor {replication_factor}, retention.ms=-1, max.message.bytes={max_message_bytes}"
    )


def schema() -> None:
    """Print the topic's JSON Schema (the envelope of every record: puts, put_if_absent, deletes)."""
    typer.echo(envelope_json_schema_text(), nl=False)


def config() -> None:
    """Print the effective settings and where each came from (option, env, file or default).

    Secrets are masked and the database URL is shown without its password.
    """
    try:
        loaded = load_settings({}, CONFIG_FILE.get())
    except SettingsError as error:
        fail(str(error))
    table = Table("setting", "value", "from", box=None)
    for name, value in loaded.settings.shown().items():
        table.add_row(name, value, loaded.origins[name])
    Console(highlight=False, width=200).print(table)


def project(
    database_url: DatabaseUrl = None,
    bootstrap_servers: KafkaServers = None,
    topic: Topic = None,
    projection: Annotated[
        str | None,
        typer.Option(
            help="The projection's name; its offsets are kept under it "
            "[setting projection, env RUNEVENTS_PROJECTION; default main]",
            show_default=False,
        ),
    ] = None,
    schema: ProjectionSchema = None,
    partitions: Annotated[
        str | None,
        typer.Option(
            help="Own these partitions (e.g. 0,1,2) instead of sharing the topic in a consumer group."
        ),
    ] = None,
    session_timeout_ms: Annotated[
        int,
        typer.Option(
            min=1000, help="How long the group waits for a silent projector before moving its partitions."
        ),
    ] = 10_000,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            help="Port of /metrics, /healthz and /livez; 0: none "
            "[setting metrics_port, env RUNEVENTS_METRICS_PORT; default 9400]",
            show_default=False,
        ),
    ] = None,
    metrics_host: Annotated[
        str | None,
        typer.Option(
            help="Address the metrics port listens on; 0.0.0.0 for every interface (a pod's probes) "
            "[setting metrics_host, env RUNEVENTS_METRICS_HOST; default 127.0.0.1]",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run one projector: apply the topic's records to the read tables until SIGTERM or Ctrl-C.

    It serves Prometheus metrics on /metrics, and /healthz (200 once it has partitions and the
    database answers, else 503) and /livez (200 while its loop runs) for probes.
    """
    owned: list[int] | None = None
    if partitions is not None:
        try:
            owned = sorted({int(part) for part in partitions.split(",") if part.strip()})
        except ValueError:
            fail(f"--partitions takes comma-separated partition numbers, got {partitions!r}")
    settings = settings_of(
        database_url=database_url,
        kafka=bootstrap_servers,
        topic=topic,
        projection=projection,
        schema_name=schema,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
    )
    try:
        asyncio.run(_project(settings, owned, session_timeout_ms))
    # Raised while starting: a setting to fix (the brokers, the tables, a name). Later, aiokafka
    # reconnects and the projector retries the database with backoff.
    except _START_ERRORS as error:
        fail(f"projector did not start: {failure_line(error, settings)}")
    except (SQLAlchemyError, OSError, RunEventsError, KafkaError, ValueError) as error:
        fail(f"projector stopped: {failure_line(error, settings)}")


class ProjectorStartError(RunEventsError):
    """A projector that cannot start; the message says which server and why."""


# What a projector raises while starting: a setting to fix (the brokers, the tables, a name, the
# partitions it was told to own).
_START_ERRORS: Final = (
    ProjectorStartError,
    KafkaConnectionError,
    SchemaOutdatedError,
    InvalidNameError,
    PartitionsError,
    TopicMissingError,
)


async def _project(settings: Settings, owned: list[int] | None, session_timeout_ms: int) -> None:
    """Run a projector until SIGTERM or SIGINT, then let it finish its batch and leave the group."""
    # Its own lines (assignments, stale batches, dead letters) at INFO; the Kafka client's and the
    # migrations' at WARNING. Every line masked: a driver's message may quote a URL.
    log_to_stderr(settings.log_level)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    projector = Projector(
        settings.bootstrap_servers(),
        settings.database(),
        topic=settings.topic,
        projection=settings.projection,
        schema=settings.schema_name,
        partitions=owned,
        consumer_options={
            "session_timeout_ms": session_timeout_ms,
            "heartbeat_interval_ms": max(session_timeout_ms // 4, 250),
        },
        client_options=settings.kafka_options(),
    )
    try:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        # Once, before anything starts: a wrong password or an unreachable server is a setting to fix, not
        # an outage to ride out (later, the projector retries with backoff instead).
        try:
            async with asyncio.timeout(STARTUP_CHECK_S):
                await projector.check_database()
        except (TimeoutError, OSError, *DATABASE_ERRORS) as error:
            if isinstance(error, TimeoutError):
                reason = f"no answer within {STARTUP_CHECK_S:g} s"
            else:
                reason = error_line(error)
            where = settings.shown_database()
            raise ProjectorStartError(f"the database {where} refused or did not answer: {reason}") from None
        async with contextlib.AsyncExitStack() as serving:
            try:
                await serving.enter_async_context(
                    serve_metrics(projector, settings.metrics_host, settings.metrics_port)
                )
            except OSError as error:  # the port taken, or an address this host does not have
                where = f"{settings.metrics_host}:{settings.metrics_port}"
                raise ProjectorStartError(f"cannot serve metrics on {where}: {error_line(error)}") from None
            await projector.run(stop)
    finally:
        await projector.close()  # also when it fails before run(): its pool is not left open
