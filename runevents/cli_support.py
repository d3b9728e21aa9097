"""What every `runevents` command shares: its settings, and one-line errors that never show a secret."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Coroutine
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Final, NoReturn, TypeVar

import typer
from aiokafka.errors import KafkaError
from rich.progress import ProgressColumn, Task
from rich.text import Text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError

from runevents.errors import RunEventsError
from runevents.settings import Settings, SettingsError, load_settings

T = TypeVar("T")

# The config file named by `runevents --config PATH` (the app's callback sets it for the command).
CONFIG_FILE: ContextVar[Path | None] = ContextVar("CONFIG_FILE", default=None)

# The options that stand for settings, with the same names in every command. None: not given, so
# the environment, the config file or the default decides (see runevents.settings).
DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database",
        help="The read tables' database, postgresql://user@host/db [setting database_url, "
        "env RUNEVENTS_DATABASE_URL]",
        show_default=False,
    ),
]
KafkaServers = Annotated[
    str | None,
    typer.Option(
        "--kafka",
        help="Kafka bootstrap servers, host:port[,...] [setting kafka, env RUNEVENTS_KAFKA]",
        show_default=False,
    ),
]
Topic = Annotated[
    str | None,
    typer.Option(
        help="The topic [setting topic, env RUNEVENTS_TOPIC; default run-events]", show_default=False
    ),
]
ProjectionSchema = Annotated[
    str | None,
    typer.Option(
        "--schema",
        help="PostgreSQL schema of the projection's tables [setting schema_name, env RUNEVENTS_SCHEMA_NAME]",
        show_default=False,
    ),
]


def settings_of(**options: Any) -> Settings:
    """This command's settings: its options over the environment over the config file; one line if wrong."""
    try:
        settings = load_settings(options, CONFIG_FILE.get()).settings
        settings.require(*(name for name in _REQUIRED if name in options))
        if "kafka" in options:
            settings.kafka_options()  # its security settings, checked before anything starts
    except SettingsError as error:
        fail(str(error))
    return settings


# Settings a command needs when it takes their option (it reaches that server).
_REQUIRED: Final = ("database_url", "kafka")


def secrets_of(settings: Settings | None) -> list[str]:
    """The secret values `settings` holds, to keep them out of every message."""
    if settings is None:
        return []
    found = [
        secret.get_secret_value()
        for secret in (settings.database_password, settings.kafka_sasl_password)
        if secret is not None
    ]
    if settings.database_url is not None:
        found.append(password_of(settings.database_url) or "")
    return [secret for secret in found if secret]


def error_line(error: BaseException, *secrets: str | None) -> str:
    """One line saying what went wrong, the driver's own words first, never a secret."""
    if isinstance(error, DBAPIError) and error.orig is not None:
        error = error.orig
    lines = str(error).strip().splitlines()
    name = type(error).__name__
    if not lines:
        return name
    # Some errors (aiokafka's) start their message with their own name already.
    return scrub(lines[0] if lines[0].startswith(name) else f"{name}: {lines[0]}", *secrets)


def scrub(text: str, *secrets: str | None) -> str:
    """`text` with every one of `secrets` replaced by `***`."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


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


def run_or_fail(work: Coroutine[Any, Any, T], settings: Settings) -> T:
    """Run `work`; an error of ours, the database's, the broker's or the OS's is one line and exit 1."""
    secrets = secrets_of(settings)
    try:
        return asyncio.run(work)
    except RunEventsError as error:
        fail(scrub(str(error), *secrets))
    except (SQLAlchemyError, OSError, KafkaError, ValueError) as error:
        fail(error_line(error, *secrets))


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
