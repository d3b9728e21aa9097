"""`runevents project`: run one projector, after checking what it needs to start."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from typing import Annotated, Final

import typer
from aiokafka.errors import KafkaConnectionError, KafkaError
from sqlalchemy.exc import SQLAlchemyError

from runevents.bus.clients import DEFAULT_SESSION_TIMEOUT_MS, group_member_options
from runevents.bus.projector import Projector
from runevents.bus.projector.loop import FETCH_MAX_WAIT_MS, PartitionsError
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
    ] = DEFAULT_SESSION_TIMEOUT_MS,
    fetch_max_wait_ms: Annotated[
        int,
        typer.Option(
            min=1,
            max=60_000,
            help="How long the broker may hold a fetch while no records come: short keeps a put's wait for "
            "its record short; longer fetches less often (for brokers where a fetch is costly).",
        ),
    ] = FETCH_MAX_WAIT_MS,
    stop_timeout_s: StopTimeout = STOP_TIMEOUT_S,
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
    run = functools.partial(_run, settings, owned, session_timeout_ms, fetch_max_wait_ms)
    try:
        # From its start on, a SIGTERM stops the projector; it ends within the stop timeout.
        asyncio.run(until_signalled(run, stop_timeout_s, log))
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
        consumer_options={**group_member_options(session_timeout_ms), "fetch_max_wait_ms": fetch_max_wait_ms},
        client_options=settings.kafka_options(),
        stop_timeout_s=stop_timeout_s,
        keyring=settings.keyring(),
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
