"""`runevents dead-letters`: list, show, retry and drop the records a projector could not apply."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from runevents.cli.support import DatabaseUrl, KafkaServers, ProjectionSchema, fail, run_or_fail, settings_of
from runevents.ops import dead_letters as ops
from runevents.settings import Settings
from runevents.tables.sql import engine_for

dead_letters_app = typer.Typer(
    rich_markup_mode="markdown",
    help="Records the projector could not apply: list them, show one, retry or drop them. Every "
    "retry and drop is recorded with the letter (status, when, and where it went or why).",
    no_args_is_help=True,
)

Ids = Annotated[list[int], typer.Argument(help="Dead letter ids, as `list` shows them.", min=1)]
T = TypeVar("T")


def _run(settings: Settings, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """Run `work` with an engine on the database; any failure is one line and exit 1."""

    async def main() -> T:
        engine = engine_for(settings.database(), schema=settings.schema_name)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    return run_or_fail(main(), settings)


def _text(data: bytes | None) -> str:
    """Bytes for a terminal: UTF-8 where it is, escaped where not; `-` for none."""
    if data is None:
        return "-"
    try:
        return data.decode()
    except UnicodeDecodeError:
        return repr(data)


@dead_letters_app.command("list")
def list_letters(
    database_url: DatabaseUrl = None,
    schema: ProjectionSchema = None,
    status: Annotated[
        str, typer.Option(help="open (not yet dealt with), retried, dropped, or all.")
    ] = ops.OPEN,
    projection: Annotated[str | None, typer.Option(help="Only this projection's.")] = None,
    topic: Annotated[str | None, typer.Option(help="Only this topic's.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, oldest first.")] = 100,
) -> None:
    """List dead letters, oldest first: id, where the record was, when, why, and its status."""
    if status not in (ops.OPEN, ops.RETRIED, ops.DROPPED, "all"):
        fail(f"--status takes open, retried, dropped or all, not {status!r}")
    chosen: Any = None if status == "all" else status
    letters = _run(
        settings_of(database_url=database_url, schema_name=schema),
        lambda engine: ops.list_dead_letters(
            engine, status=chosen, projection=projection, topic=topic, limit=limit
        ),
    )
    if not letters:
        typer.echo(f"no dead letters ({status})")
        return
    table = Table("id", "topic/partition/offset", "dead at (UTC)", "status", "reason", box=None)
    for letter in letters:
        table.add_row(
            str(letter.id), letter.source, f"{letter.dead_at:%Y-%m-%d %H:%M:%S}", letter.status, letter.reason
        )
    Console(highlight=False, width=200).print(table)


@dead_letters_app.command("show")
def show(
    letter_id: Annotated[int, typer.Argument(help="The dead letter's id.")],
    database_url: DatabaseUrl = None,
    schema: ProjectionSchema = None,
) -> None:
    """Show one dead letter whole: where it was, why, its key, headers and value, and its fate."""
    settings = settings_of(database_url=database_url, schema_name=schema)
    letter = _run(settings, lambda engine: ops.get_dead_letter(engine, letter_id))
    typer.echo(f"id:          {letter.id}")
    typer.echo(f"projection:  {letter.projection}")
    typer.echo(f"record:      {letter.source}")
    typer.echo(f"dead at:     {letter.dead_at.isoformat()}")
    typer.echo(f"reason:      {letter.reason}")
    resolved = f" at {letter.resolved_at.isoformat()}: {letter.resolution}" if letter.resolved_at else ""
    typer.echo(f"status:      {letter.status}{resolved}")
    typer.echo(f"key:         {_text(letter.key)}")
    for name, value in letter.headers:
        typer.echo(f"header:      {name}: {value}")
    value_text = _text(letter.value)
    with contextlib.suppress(orjson.JSONDecodeError):  # not JSON: shown as it is
        value_text = orjson.dumps(orjson.loads(letter.value or b""), option=orjson.OPT_INDENT_2).decode()
    typer.echo(f"value:\n{value_text}")


@dead_letters_app.command("retry")
def retry(
    letter_ids: Ids,
    database_url: DatabaseUrl = None,
    bootstrap_servers: KafkaServers = None,
    schema: ProjectionSchema = None,
    value_file: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="Publish this file's bytes instead of the record's value (one id).",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Publish even if this runevents would dead-letter the record again.")
    ] = False,
) -> None:
    """Re-publish open dead letters to their topics, after the record or the projector was fixed."""
    value = value_file.read_bytes() if value_file is not None else None
    settings = settings_of(database_url=database_url, kafka=bootstrap_servers, schema_name=schema)
    retried = _run(
        settings,
        lambda engine: ops.retry_dead_letters(
            engine,
            settings.bootstrap_servers(),
            letter_ids,
            value=value,
            force=force,
            client_options=settings.kafka_options(),
        ),
    )
    for done in retried:
        typer.echo(
            f"dead letter {done.letter_id}: re-published to {done.topic}/{done.partition}/{done.offset}"
        )
    typer.echo(f"retried {len(retried)}")


@dead_letters_app.command("drop")
def drop(
    letter_ids: Ids,
    note: Annotated[str, typer.Option(help="Why it is dropped; kept with the letter.")],
    database_url: DatabaseUrl = None,
    schema: ProjectionSchema = None,
) -> None:
    """Mark open dead letters as dropped, with a note; the records stay in the table."""
    settings = settings_of(database_url=database_url, schema_name=schema)
    dropped = _run(settings, lambda engine: ops.drop_dead_letters(engine, letter_ids, note=note))
    typer.echo(f"dropped {len(dropped)}: {', '.join(str(letter.id) for letter in dropped)}")
