"""`runevents usage run|show`: keep token usage off the topic in a group of its own; show a thread's."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from typing import Annotated, Any, Final
from urllib.parse import parse_qs, urlencode, urlsplit

import typer
from aiokafka.errors import KafkaConnectionError, KafkaError
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from runevents.bus.clients import DEFAULT_SESSION_TIMEOUT_MS, group_member_options
from runevents.bus.topic import TopicMissingError
from runevents.cli.stopping import STOP_TIMEOUT_S, StopTimeout, until_signalled
from runevents.cli.support import (
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
from runevents.names import InvalidNameError
from runevents.retrying import Stopped, unless_stopped
from runevents.settings import Settings
from runevents.tables.failures import DATABASE_ERRORS
from runevents.tables.sql import LIBPQ_TLS
from runevents.usage import DEFAULT_GROUP, UsageConsumer, UsageReader, telemetry

log = logging.getLogger(__name__)

STARTUP_CHECK_S: Final = 15.0
GROUP_ENV: Final = "RUNEVENTS_USAGE_GROUP"

usage_app = typer.Typer(
    help="Token usage per thread, run and model, kept off the topic by a consumer group of its own.",
    no_args_is_help=True,
)


class UsageStartError(RunEventsError):
    """A usage consumer that cannot start; the message says which server and why."""


# Raised while starting: a setting to fix (the brokers, the tables, a name).
_START_ERRORS: Final = (
    UsageStartError,
    KafkaConnectionError,
    SchemaOutdatedError,
    InvalidNameError,
    TopicMissingError,
)


@usage_app.command("run")
def run(
    database_url: DatabaseUrl = None,
    bootstrap_servers: KafkaServers = None,
    topic: Topic = None,
    group: Annotated[
        str,
        typer.Option(
            envvar=GROUP_ENV,
            help=f"The consumer group; its offsets are kept under it [env {GROUP_ENV}]",
            show_envvar=False,
        ),
    ] = DEFAULT_GROUP,
    schema: ProjectionSchema = None,
    session_timeout_ms: Annotated[
        int,
        typer.Option(
            min=1000, help="How long the group waits for a silent consumer before moving its partitions."
        ),
    ] = DEFAULT_SESSION_TIMEOUT_MS,
    stop_timeout_s: StopTimeout = STOP_TIMEOUT_S,
    otel: Annotated[
        bool,
        typer.Option(
            "--otel",
            help="Also export an OpenTelemetry GenAI span of each call kept (needs the `otel` extra and an "
            "SDK configured, e.g. by opentelemetry-instrument).",
        ),
    ] = False,
) -> None:
    """Keep token usage from the topic's `llm.ai.response` records until SIGTERM or Ctrl-C.

    Exactly once in effect: the group's offsets move in the transaction that writes the usage rows,
    and a restarted consumer goes on from them. Deletes on the topic remove the usage they cover.

    SIGTERM or Ctrl-C: exit 0 once the batch in hand is done and the group left, within
    --stop-timeout-s; past it, or on a second one, exit 124 at once (a batch not committed is read
    again). SIGUSR1 prints where each of its tasks and threads is, on stderr.
    """
    settings = settings_of(
        database_url=database_url, kafka=bootstrap_servers, topic=topic, schema_name=schema
    )
    if otel and not telemetry.available():
        fail("--otel needs the OpenTelemetry API: pip install 'runevents[otel]'")
    run = functools.partial(_run, settings, group, session_timeout_ms, otel)
    try:
        asyncio.run(until_signalled(run, stop_timeout_s, log))
    except _START_ERRORS as error:
        fail(f"usage consumer did not start: {failure_line(error, settings)}")
    except (SQLAlchemyError, OSError, RunEventsError, KafkaError, ValueError) as error:
        fail(f"usage consumer stopped: {failure_line(error, settings)}")


async def _run(
    settings: Settings,
    group: str,
    session_timeout_ms: int,
    otel: bool,
    stop: asyncio.Event,
    stop_timeout_s: float,
) -> None:
    """Check the database and run a usage consumer until `stop`; close it whatever happens."""
    log_to_stderr(settings.log_level)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    consumer = UsageConsumer(
        settings.bootstrap_servers(),
        settings.database(),
        topic=settings.topic,
        group=group,
        schema=settings.schema_name,
        consumer_options=group_member_options(session_timeout_ms),
        client_options=settings.kafka_options(),
        export_spans=otel,
        stop_timeout_s=stop_timeout_s,
        keyring=settings.keyring(),
    )
    try:
        # Once, before anything starts: a wrong password is a setting to fix, not an outage to ride out.
        try:
            async with asyncio.timeout(STARTUP_CHECK_S):
                await unless_stopped(consumer.check_database(), stop)
        except Stopped:
            return  # stopped before it started
        except (TimeoutError, OSError, *DATABASE_ERRORS) as error:
            reason = f"no answer within {STARTUP_CHECK_S:g} s" if isinstance(error, TimeoutError) else None
            where = settings.shown_database()
            raise UsageStartError(
                f"the database {where} refused or did not answer: {reason or error_line(error)}"
            ) from None
        await consumer.run(stop)
    finally:
        await consumer.close()
        done = consumer.applied
        logging.getLogger("runevents.usage").info(
            "usage group %r: %d calls kept (%d without usage, %d of unusable usage), %d deletes applied, "
            "%d undecodable records skipped",
            group,
            done.calls,
            done.without_usage,
            done.bad_usage,
            done.deletes,
            done.undecodable,
        )


@usage_app.command("show")
def show(
    thread: Annotated[str, typer.Argument(help="The thread's id.", show_default=False)],
    database_url: DatabaseUrl = None,
    schema: ProjectionSchema = None,
    user: Annotated[
        str | None, typer.Option("--user", help="Only the calls of this user_id.", show_default=False)
    ] = None,
) -> None:
    """Print a thread's token usage: totals, per model and per run, and the calls of unknown usage."""
    settings = settings_of(database_url=database_url, schema_name=schema)
    usage = run_or_fail(_read(settings, thread, user), settings)
    if usage is None:
        fail(
            f"the database {settings.shown_database()} keeps no token usage: run `runevents db upgrade`, "
            "then `runevents usage run`"
        )
    console = Console(highlight=False)
    if usage["calls"] == 0:
        console.print(f"no model calls in thread {thread!r}", markup=False)
        return
    console.print(
        f"thread {thread!r}: {usage['total_tokens']:,} tokens ({usage['total_input_tokens']:,} in, "
        f"{usage['total_output_tokens']:,} out) in {usage['calls']:,} calls over {usage['total_runs']} runs; "
        f"{usage['calls_without_usage']:,} calls of unknown usage",
        markup=False,
    )
    console.print(_models_table(usage))
    console.print(_runs_table(usage))


async def _read(settings: Settings, thread: str, user: str | None) -> dict[str, Any] | None:
    reader = UsageReader(settings.database(), schema=settings.schema_name)
    try:
        return await reader.thread_usage(thread, user)
    finally:
        await reader.close()


def _models_table(usage: dict[str, Any]) -> Table:
    table = Table("model", "tokens", "runs", title="by model", title_justify="left")
    for model, entry in usage["by_model"].items():
        table.add_row(model, f"{entry['tokens']:,}", str(entry["runs"]))
    return table


def _runs_table(usage: dict[str, Any]) -> Table:
    table = Table(
        "run", "tokens", "input", "output", "calls", "unknown", title="by run", title_justify="left"
    )
    for run_id, entry in usage["by_run"].items():
        table.add_row(
            run_id,
            *(f"{entry[key]:,}" for key in ("total_tokens", "input_tokens", "output_tokens", "calls")),
            f"{entry['calls_without_usage']:,}",
        )
    return table


def usage_reader_for(store_url: str) -> UsageReader | None:
    """A reader of the usage tables beside a store's read tables: for sql on PostgreSQL and the bus only."""
    parts = urlsplit(store_url)
    scheme = parts.scheme.lower().split("+")[0]
    options = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    if scheme in ("postgresql", "postgres"):
        tls: dict[str, str] = {key: options[key] for key in LIBPQ_TLS if key in options}
        database = store_url.split("?", 1)[0] + (f"?{urlencode(tls)}" if tls else "")
    elif scheme == "kafka" and options.get("database", "").startswith(("postgresql", "postgres")):
        database = options["database"]
    else:
        return None  # memory, JSONL and SQLite stores have no usage consumer behind them
    with contextlib.suppress(ValueError):
        return UsageReader(database, schema=options.get("schema"))
    return None
