"""What every `runevents` command shares: one-line errors that never show a password."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Coroutine
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from aiokafka.errors import KafkaError
from rich.progress import ProgressColumn, Task
from rich.text import Text
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


class RateColumn(ProgressColumn):
    """Items per second, as rich measures them over the last seconds."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        """The task's rate, or a dash before there is one."""
        speed = task.speed
        return Text("-" if speed is None else f"{speed:,.0f} {self.unit}", style="progress.data.speed")


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (Ctrl-C), for a long job to stop between two steps."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
    return stop
