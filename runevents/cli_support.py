"""What every `runevents` command shares: one-line errors that never show a password."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from aiokafka.errors import KafkaError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError

from runevents.errors import RunEventsError

T = TypeVar("T")

# The options every command that reaches the servers takes, with the same names and variables.
DatabaseUrl = Annotated[
    str,
    typer.Option("--database", envvar="RUNEVENTS_DATABASE_URL", help="postgresql://user:password@host/db"),
]
KafkaServers = Annotated[
    str,
    typer.Option("--kafka", envvar="RUNEVENTS_KAFKA", help="Kafka bootstrap servers, host:port[,...]"),
]


def error_line(error: BaseException, password: str | None) -> str:
    """One line saying what went wrong, the driver's own words first, never the password."""
    if isinstance(error, DBAPIError) and error.orig is not None:
        error = error.orig
    lines = str(error).strip().splitlines()
    line = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return line.replace(password, "***") if password else line


def fail(message: str) -> NoReturn:
    """Print `error: message` on stderr and exit 1 (no traceback)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def password_of(url: str) -> str | None:
    """The password in a database URL, to keep it out of messages (None if none or not a URL)."""
    try:
        return make_url(url).password if "://" in url else None
    except ArgumentError:
        return None


def run_or_fail(work: Coroutine[Any, Any, T], database_url: str) -> T:
    """Run `work`; an error of ours, the database's, the broker's or the OS's is one line and exit 1."""
    try:
        return asyncio.run(work)
    except RunEventsError as error:
        fail(str(error))
    except (SQLAlchemyError, OSError, KafkaError, ValueError) as error:
        fail(error_line(error, password_of(database_url)))
