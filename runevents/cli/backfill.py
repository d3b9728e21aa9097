"""`runevents backfill`: import history onto the topic (or straight into the read tables), with progress
and a summary of what became of it."""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Final

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy.exc import SQLAlchemyError

from runevents.cli.support import (
    DatabaseUrl,
    KafkaServers,
    ProjectionSchema,
    RateColumn,
    Topic,
    error_line,
    refused_connection,
    run_or_fail,
    settings_of,
    stop_on_signals,
)
from runevents.errors import RunEventsError
from runevents.masking import mask_secrets
from runevents.ops import backfill as ops
from runevents.ops.backfill_sources import open_source
from runevents.settings import Settings
from runevents.tables.sql import SqlRunEventStore

SHOWN_REJECTED: Final = 20
SOME_REJECTED: Final = 2  # the exit status of a backfill that imported all but the rejected records


class SourceUnreadableError(RunEventsError):
    """The backfill's source could not be opened; the message names it (its passwords masked)."""


def backfill(
    source: Annotated[
        str,
        typer.Argument(
            help="A JSONL directory (runevents' or deer-flow's: threads/{thread}/runs/{run}.jsonl), or "
            "the URL of a runevents database or of deer-flow's (postgresql://... or sqlite:///...)."
        ),
    ],
    database_url: DatabaseUrl = None,
    bootstrap_servers: KafkaServers = None,
    topic: Topic = None,
    schema: ProjectionSchema = None,
    source_schema: Annotated[
        str | None, typer.Option(help="PostgreSQL schema of the source's run_events table.")
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Stop at the first record that cannot be imported.")
    ] = False,
    batch: Annotated[
        int, typer.Option(min=1, help="Records published per acknowledged batch.")
    ] = ops.DEFAULT_BATCH,
    direct: Annotated[
        bool,
        typer.Option(
            "--direct",
            help="Write into the --database tables directly, as the sql backend writes (no broker; "
            "SQLite too), instead of publishing onto the topic.",
        ),
    ] = False,
) -> None:
    """Publish history onto the topic, each thread in its original order, for the projectors to apply.

    Event ids come from the source (derived from thread, run and seq where it has none), and what the
    read tables hold already is skipped: run it again after a kill, or twice, and nothing is doubled.

    A record that cannot be imported is reported with its place (file:line, or the row) and the rest go
    on; with --strict the backfill stops there. Exit status: 0 all imported or skipped, 2 some
    rejected, 1 could not run (or stopped by --strict), 130 stopped by Ctrl-C (run it again to go on).
    """
    # --direct writes the tables alone: no broker is asked for.
    bus = {} if direct else {"kafka": bootstrap_servers, "topic": topic}
    settings = settings_of(database_url=database_url, schema_name=schema, **bus)
    console = Console(highlight=False, soft_wrap=True)
    result = run_or_fail(_backfill(console, source, source_schema, settings, strict, batch, direct), settings)
    where = f"into the read tables at {_target(settings, direct)}" if direct else f"onto {settings.topic!r}"
    _summarize(console, result, where)
    if result.stopped:
        raise typer.Exit(130)
    if result.rejected:
        raise typer.Exit(SOME_REJECTED)


def _target(settings: Settings, direct: bool) -> str:
    """Where the events go, as the progress bar and the summary name it."""
    return mask_secrets(settings.database()) if direct else settings.topic


async def _backfill(
    console: Console,
    location: str,
    source_schema: str | None,
    settings: Settings,
    strict: bool,
    batch: int,
    direct: bool,
) -> ops.Backfilled:
    try:
        source = await open_source(location, source_schema)
    except (SQLAlchemyError, OSError, ImportError) as error:
        # Said here: the same failure on the topic's database would otherwise read alike.
        verb = "refused or did not answer" if refused_connection(error) else "cannot be read"
        raise SourceUnreadableError(
            f"the source {mask_secrets(location)} {verb}: {error_line(error)}"
        ) from None
    stop = stop_on_signals()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn("rec/s"))
    bar = Progress(*columns, TimeRemainingColumn(), console=console)
    task = bar.add_task(f"{source.description} -> {_target(settings, direct)}", total=None)

    def show(result: ops.Backfilled) -> None:
        if not bar.live.is_started:  # started with the first batch: a refusal shows its error alone
            bar.start()
        bar.update(task, completed=result.read, total=result.total)

    try:
        if direct:
            async with SqlRunEventStore(settings.database(), schema=settings.schema_name) as store:
                return await ops.backfill_tables(
                    source, store, strict=strict, batch_size=batch, on_progress=show, stop=stop
                )
        return await ops.backfill(
            source,
            settings.bootstrap_servers(),
            settings.database(),
            topic=settings.topic,
            schema=settings.schema_name,
            strict=strict,
            batch_size=batch,
            on_progress=show,
            stop=stop,
            client_options=settings.kafka_options(),
            keyring=settings.keyring(),
        )
    finally:
        if bar.live.is_started:
            bar.stop()
        await source.close()


def _summarize(console: Console, result: ops.Backfilled, target: str) -> None:
    """One summary line, then the skips and rejections by reason, and where the rejected records are."""
    skipped = sum(result.skipped.values())
    verb = "stopped after reading" if result.stopped else "read"
    console.print(
        f"{verb} {result.read:,} of {result.total:,} records in {result.seconds:.1f} s "
        f"({result.rate:,.0f} records/s): imported {result.imported:,} {target}, "
        f"skipped {skipped:,}, rejected {len(result.rejected):,}"
    )
    for reason, count in result.skipped.most_common():
        console.print(f"  skipped {count:,}: {reason}")
    reasons = Counter(rejected.reason.split(" (")[0] for rejected in result.rejected)
    for reason, count in reasons.most_common():
        console.print(f"  rejected {count:,}: {reason}")
    for rejected in result.rejected[:SHOWN_REJECTED]:
        console.print(f"  {rejected.where}: {rejected.reason}")
    if len(result.rejected) > SHOWN_REJECTED:
        console.print(f"  ... and {len(result.rejected) - SHOWN_REJECTED:,} more")
    for note in result.notes[:SHOWN_REJECTED]:
        console.print(f"  note: {note}")
    if result.stopped:
        console.print("run the same command to go on: what was imported is skipped")
