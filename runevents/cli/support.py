"""What every `runevents` command shares: its settings, and one-line errors that never show a secret.

Every line a command prints about a failure goes through `scrub`, that is through
`runevents.masking.mask_secrets` with the secret values of the command's settings added.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import socket
import threading
from collections.abc import Coroutine, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Final, NoReturn, TypeVar

import typer
from aiokafka.errors import KafkaConnectionError, KafkaError
from rich.progress import ProgressColumn, Task
from rich.text import Text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from runevents import masking
from runevents.cli.environment import unknown_variables
from runevents.errors import RunEventsError
from runevents.masking import MaskingFormatter, mask_secrets
from runevents.names import InvalidNameError, check_identifier
from runevents.settings import Settings, SettingsError, load_settings

T = TypeVar("T")

# The config file named by `runevents --config PATH` (the app's callback sets it for the command).
CONFIG_FILE: ContextVar[Path | None] = ContextVar("CONFIG_FILE", default=None)
# The secret values of the command's settings, once read: masked from every line `fail` prints.
_SECRETS: ContextVar[tuple[str, ...]] = ContextVar("_SECRETS", default=())
# A socket address as Python prints it: `('127.0.0.1', 9)`, `('::1', 9, 0, 0)`, or as aiokafka
# lists the ones it tried, `('127.0.0.1', 9, <AddressFamily.AF_INET: 2>)`.
_ADDRESS: Final = re.compile(r"\('([^'\s]+)', (\d+)(?:, (?:\d+|<AddressFamily\.\w+: \d+>))*\)")
# SQLSTATE classes of a database that refused the connection: 08 connection, 28 authorization,
# 3D000 no such database.
_REFUSED_STATES: Final = ("08", "28", "3D000")

# The options that stand for settings, with the same names in every command. None: not given, so
# the environment, the config file or the default decides (see runevents.settings).
DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database",
        help="The read tables' database, postgresql://user@host/db or sqlite:///path "
        "[setting database_url, env RUNEVENTS_DATABASE_URL]",
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


def begin_command(config: Path | None) -> None:
    """Start a command: its config file, no secrets from an earlier one, a warning per unknown variable."""
    CONFIG_FILE.set(config)
    _SECRETS.set(())
    for warning in unknown_variables():
        typer.echo(f"warning: {warning}", err=True)


def remember_secrets(*secrets: str) -> None:
    """Mask `secrets` (besides the settings') from every line this command prints about a failure."""
    _SECRETS.set((*_SECRETS.get(), *secrets))


def settings_of(**options: Any) -> Settings:
    """This command's settings: its options over the environment over the config file; one line if wrong."""
    try:
        settings = load_settings(options, CONFIG_FILE.get()).settings
        settings.require(*(name for name in _REQUIRED if name in options))
        if "kafka" in options:
            settings.kafka_options()  # its security settings, checked before anything starts
    except SettingsError as error:
        fail(str(error))
    remember_secrets(*settings.secrets())
    return settings


# Settings a command needs when it takes their option (it reaches that server).
_REQUIRED: Final = ("database_url", "kafka")


def check_names(*names: tuple[str, str, str | None]) -> None:
    """Refuse, in one line naming the option, a schema or projection name that breaks the naming rule.

    Each of `names` is (option or argument as help shows it, kind of name, value or None if not
    given); checked before anything connects, so a refused name leaves nothing half-made.
    """
    for option, kind, name in names:
        if name is None:
            continue
        try:
            check_identifier(kind, name)
        except InvalidNameError as error:
            fail(f"{option}: {error}")


def secrets_of(settings: Settings | None) -> list[str]:
    """The secret values `settings` holds, to keep them out of every message."""
    return [] if settings is None else settings.secrets()


def error_line(error: BaseException, *secrets: str | None) -> str:
    """One line saying what went wrong, the driver's own words first, never a secret or a repr."""
    return scrub(masking.error_line(_driver_error(error)), *secrets)


def _driver_error(error: BaseException) -> BaseException:
    """The driver's own exception inside SQLAlchemy's wrappers (asyncpg's, named for what went wrong)."""
    if isinstance(error, DBAPIError) and error.orig is not None:
        error = error.orig
        # SQLAlchemy's asyncpg adapter raises its own `Error`, caused by asyncpg's.
        if type(error).__module__.startswith("sqlalchemy") and error.__cause__ is not None:
            error = error.__cause__
    return error


def scrub(text: str, *secrets: str | None) -> str:
    """`text` on one line, every password a URL in it carries and every secret of the settings as `***`."""
    return mask(" ".join(line.strip() for line in text.strip().splitlines() if line.strip()), *secrets)


def mask(text: str, *secrets: str | None) -> str:
    """`text` as it is but with every password and secret as `***` and socket addresses as `host:port`."""
    return mask_secrets(plain_addresses(text), *_SECRETS.get(), *secrets)


def plain_addresses(text: str) -> str:
    """`text` with every socket address Python prints as a tuple shown as `host:port`."""
    return _ADDRESS.sub(_host_port, text)


def _host_port(found: re.Match[str]) -> str:
    host, port = found.group(1), found.group(2)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class LogFormatter(MaskingFormatter):
    """A log line with its secrets masked and its socket addresses shown as `host:port`."""

    def format(self, record: logging.LogRecord) -> str:
        """The formatted record, masked."""
        return plain_addresses(super().format(record))


def fail(message: str, *secrets: str | None) -> NoReturn:
    """Print `error: message` on stderr, on one line and its secrets masked, and exit 1 (no traceback)."""
    typer.echo(f"error: {scrub(message, *secrets)}", err=True)
    raise typer.Exit(1)


def failure_line(error: BaseException, settings: Settings) -> str:
    """One line for an error a command ended on, naming the server that refused or did not answer."""
    reason = error_line(error)
    if isinstance(error, KafkaConnectionError) and settings.kafka is not None:
        return f"the brokers at {settings.kafka} did not answer: {reason}"
    if settings.database_url is not None and refused_connection(error):
        return f"the database {settings.shown_database()} refused or did not answer: {reason}"
    if isinstance(error, RunEventsError):
        return scrub(str(error))
    return reason


def refused_connection(error: BaseException) -> bool:
    """Whether `error` is a database refusing or not answering a connection (not a failed statement)."""
    error = _driver_error(error)
    if isinstance(error, ConnectionError | socket.gaierror | TimeoutError):
        return True
    if type(error) is OSError:
        # asyncio's "Multiple exceptions: ..." of a connection tried at each address of a name.
        return error.errno is None and error.filename is None
    state = getattr(error, "sqlstate", None)
    return isinstance(state, str) and state.startswith(_REFUSED_STATES)


def run_or_fail(work: Coroutine[Any, Any, T], settings: Settings) -> T:
    """Run `work`; an error of ours, the database's, the broker's or the OS's is one line and exit 1."""
    try:
        with quiet_kafka_client():
            return asyncio.run(work)
    # ImportError: a driver named in a URL that is not installed.
    except (RunEventsError, SQLAlchemyError, OSError, KafkaError, ValueError, ImportError) as error:
        fail(failure_line(error, settings))


@contextlib.contextmanager
def quiet_kafka_client() -> Iterator[None]:
    """Silence the Kafka client's log while a short command runs: its failures arrive as exceptions."""
    kafka_log = logging.getLogger("aiokafka")
    level = kafka_log.level
    # It logs each failed connection attempt (`Unable connect to ...`) before raising.
    kafka_log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        kafka_log.setLevel(level)


def log_to_stderr(level: str | int, *secrets: str) -> None:
    """Send log lines to stderr, each with a time, a level and its secrets masked (long jobs' log)."""
    root = logging.getLogger()
    if root.handlers:  # configured already (a test's capture, say): left as it is, as basicConfig does
        return
    handler = logging.StreamHandler()
    fields = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(LogFormatter(fields, secrets=(*_SECRETS.get(), *secrets)))
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)


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
