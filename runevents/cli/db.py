"""`runevents db upgrade`: create the read tables, or upgrade them to the revision runevents needs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from alembic.util.exc import CommandError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from runevents.cli.support import ProjectionSchema, error_line, fail, settings_of
from runevents.errors import RunEventsError
from runevents.tables import migrate
from runevents.tables.sql import engine_for

db_app = typer.Typer(
    rich_markup_mode="markdown",
    help="The read tables' database: create and upgrade them.",
    no_args_is_help=True,
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
