"""`runevents project`: run one projector, after checking what it needs to start."""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import linecache
import logging
import os
import signal
import sys
from collections.abc import Iterator
from typing import Annotated, Any, Final, NoReturn

import typer
from aiokafka.errors import KafkaConnectionError, KafkaError
from sqlalchemy.exc import SQLAlchemyError

from runevents.bus.projector import Projector
from runevents.bus.projector.loop import FETCH_MAX_WAIT_MS, PartitionsError
from runevents.bus.topic import TopicMissingError
from runevents.cli.support import (
    DatabaseUrl,
    KafkaServers,
    ProjectionSchema,
    Topic,
    error_line,
    fail,
    failure_line,
    log_to_stderr,
    settings_of,
)
from runevents.errors import RunEventsError, SchemaOutdatedError
from runevents.metrics import serve_metrics
from runevents.names import InvalidNameError
from runevents.retrying import Stopped, unless_stopped
from runevents.settings import Settings
from runevents.tables.failures import DATABASE_ERRORS

log = logging.getLogger(__name__)

STARTUP_CHECK_S: Final = 15.0
# Under the stop grace deploy/compose.yaml gives (30 s), and Kubernetes' default (30 s).
STOP_TIMEOUT_S: Final = 20.0
# Of --stop-timeout-s, what the projector may take to stop; the rest is for the process to end.
PROJECTOR_SHARE: Final = 0.75
# The exit status of a projector that did not stop in time, or was told twice (as timeout(1)'s).
EXIT_STOP_OVERDUE: Final = 124
# Should the event loop itself be stuck, a thread prints every thread's stack and exits 1 this much later.
BLOCKED_LOOP_GRACE_S: Final = 5.0
# What tasks still running once the projector stopped get to end, even past its share of the timeout.
LAST_MOMENT_S: Final = 0.2


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
    fetch_max_wait_ms: Annotated[
        int,
        typer.Option(
            min=1,
            max=60_000,
            help="How long the broker may hold a fetch while no records come: short keeps a put's wait for "
            "its record short; longer fetches less often (for brokers where a fetch is costly).",
        ),
    ] = FETCH_MAX_WAIT_MS,
    stop_timeout_s: Annotated[
        float,
        typer.Option(
            min=2.0,
            help="How long a SIGTERM or Ctrl-C may take: the batch in hand commits (or rolls back) and "
            "the projector leaves the group within it; past it, the projector prints where it is "
            f"stuck and exits {EXIT_STOP_OVERDUE}.",
        ),
    ] = STOP_TIMEOUT_S,
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

    SIGTERM or Ctrl-C: exit 0 once stopped, within --stop-timeout-s; past it, or on a second one,
    exit 124 at once (nothing is lost: a batch not committed is read again). SIGUSR1 prints where
    each of its tasks and threads is, on stderr.
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
        asyncio.run(
            _project(settings, owned, session_timeout_ms, fetch_max_wait_ms, stop_timeout_s=stop_timeout_s)
        )
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


async def _project(
    settings: Settings,
    owned: list[int] | None,
    session_timeout_ms: int,
    fetch_max_wait_ms: int,
    *,
    stop_timeout_s: float,
) -> None:
    """Run a projector until SIGTERM or SIGINT, then let it finish its batch and leave the group."""
    # First of all: from here on, a SIGTERM stops the projector. (Before, it ends the process, which
    # has opened nothing yet.)
    stopping = StopSignals(stop_timeout_s)
    faulthandler.enable()  # SIGABRT, and a crash, print every thread's stack
    projector_stop_s = stop_timeout_s * PROJECTOR_SHARE
    await _run(settings, owned, session_timeout_ms, fetch_max_wait_ms, stopping.requested, projector_stop_s)
    if stopping.requested.is_set():
        await stopping.end_what_is_left(projector_stop_s)


async def _run(
    settings: Settings,
    owned: list[int] | None,
    session_timeout_ms: int,
    fetch_max_wait_ms: int,
    stop: asyncio.Event,
    stop_timeout_s: float,
) -> None:
    """Check the database, serve metrics and run the projector until `stop`; close it whatever happens."""
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
            "fetch_max_wait_ms": fetch_max_wait_ms,
        },
        client_options=settings.kafka_options(),
        stop_timeout_s=stop_timeout_s,
    )
    try:
        # Once, before anything starts: a wrong password or an unreachable server is a setting to fix, not
        # an outage to ride out (later, the projector retries with backoff instead).
        try:
            async with asyncio.timeout(STARTUP_CHECK_S):
                await unless_stopped(projector.check_database(), stop)
        except Stopped:
            return  # stopped before it started
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


class StopSignals:
    """SIGTERM and SIGINT stop the projector, which then has `timeout_s` before the process exits anyway.

    A second one exits at once. SIGUSR1 prints where every task and thread is, and changes nothing.
    """

    def __init__(self, timeout_s: float) -> None:
        self.requested = asyncio.Event()
        self._timeout_s = timeout_s
        self._loop = asyncio.get_running_loop()
        self._requested_at = 0.0
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(signum, self._stop, signal.Signals(signum))
        self._loop.add_signal_handler(signal.SIGUSR1, print_stacks, "SIGUSR1")

    def _stop(self, signum: signal.Signals) -> None:
        if self.requested.is_set():
            log.warning("%s again: exiting at once (a batch not committed is read again)", signum.name)
            exit_now(EXIT_STOP_OVERDUE)
        log.info("%s: stopping within %g s", signum.name, self._timeout_s)
        self._requested_at = self._loop.time()
        self.requested.set()
        self._loop.call_later(self._timeout_s, self._overdue, signum)
        # The call above never comes if the loop itself is stuck: then a thread of faulthandler's
        # prints every thread's stack and exits 1.
        faulthandler.dump_traceback_later(self._timeout_s + BLOCKED_LOOP_GRACE_S, exit=True)

    def _overdue(self, signum: signal.Signals) -> None:
        log.error(
            "not stopped %g s after %s: exiting without finishing (a batch not committed is read "
            "again from the stored offsets); where it was:",
            self._timeout_s,
            signum.name,
        )
        print_stacks(f"{self._timeout_s:g} s after {signum.name}")
        exit_now(EXIT_STOP_OVERDUE)

    async def end_what_is_left(self, within_s: float) -> None:
        """Once the projector stopped: cancel what still runs, and end the process without what has not
        ended `within_s` of the stop (a rollback waiting on a database that does not answer, say)."""
        left = asyncio.all_tasks() - {asyncio.current_task()}
        for task in left:
            task.cancel()
        if not left:
            return
        wait_s = max(self._requested_at + within_s - self._loop.time(), LAST_MOMENT_S)
        _, stuck = await asyncio.wait(left, timeout=wait_s)
        if stuck:
            # The server ends the connections they wait on (and rolls back what they held) as the
            # process exits: nothing is lost.
            log.warning("stopped; leaving %d tasks that did not end in time", len(stuck))
            exit_now(0)


def print_stacks(why: str) -> None:
    """Print on stderr what every asyncio task of this loop awaits, and every thread's stack."""
    tasks = sorted(asyncio.all_tasks(), key=lambda task: task.get_name())
    lines = [f"--- {why}: {len(tasks)} asyncio tasks, each down to what it awaits"]
    for task in tasks:
        lines.append(f"task {task.get_name()}:")
        lines.extend(f"  {place}" for place in awaits(task.get_coro()))
    lines.append(f"--- {why}: the threads")
    print("\n".join(lines), file=sys.stderr, flush=True)
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)


def awaits(awaitable: object) -> Iterator[str]:
    """Where a coroutine is, then where what it awaits is, and so on down to a future."""
    while awaitable is not None:
        frame = _first_set(awaitable, "cr_frame", "gi_frame", "ag_frame")
        if frame is None:
            yield f"(a {type(awaitable).__name__})"
            return
        code = frame.f_code
        line = linecache.getline(code.co_filename, frame.f_lineno).strip()
        yield f"{code.co_filename}:{frame.f_lineno} {code.co_name}: {line}"
        awaitable = _first_set(awaitable, "cr_await", "gi_yieldfrom", "ag_await")


def _first_set(thing: object, *names: str) -> Any:
    """The first of the attributes `names` (a coroutine's, a generator's, ...) that `thing` has set."""
    return next((value for name in names if (value := getattr(thing, name, None)) is not None), None)


def exit_now(status: int) -> NoReturn:
    """End the process with `status` at once, its log flushed; nothing else runs (no cleanup, no atexit)."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
