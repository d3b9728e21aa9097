"""Session-wide fixtures: the real PostgreSQL and Kafka broker the tests that need one run against."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import URL, make_url

from runevents.devstack.broker import LocalBroker, LocalBrokerError
from runevents.devstack.s3 import LocalS3Error
from tests.services import KAFKA_ENV, kafka_for_tests, missing_tool, postgres_for_tests

# Which server ran, for the summary line; set only when a test asked for PostgreSQL.
POSTGRES_DESCRIPTION = pytest.StashKey[str]()
# Which broker ran, for the summary line; set only when a test asked for Kafka.
KAFKA_DESCRIPTION = pytest.StashKey[str]()


@contextlib.contextmanager
def service_directory(name: str) -> Iterator[Path]:
    """A scratch directory for a session's server, removed afterwards.

    Not under pytest's basetemp: pytest deletes all but the newest three of those when another
    session starts, and PostgreSQL shuts down when its data directory disappears under it.
    """
    directory = Path(tempfile.mkdtemp(prefix=f"runevents-test-{name}-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(pytestconfig: pytest.Config) -> Iterator[str]:
    """The base asyncpg URL of the session's PostgreSQL, started on first use and stopped at the end."""
    with service_directory("postgres") as directory:
        url, description, stop = postgres_for_tests(directory)
        pytestconfig.stash[POSTGRES_DESCRIPTION] = description
        try:
            yield url
        finally:
            stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(pytestconfig: pytest.Config) -> Iterator[str]:
    """The bootstrap servers of the session's Kafka broker, started on first use and stopped at the end."""
    with service_directory("kafka") as directory:
        bootstrap, description, stop = kafka_for_tests(directory)
        pytestconfig.stash[KAFKA_DESCRIPTION] = description
        try:
            yield bootstrap
        finally:
            stop()


@pytest.fixture
def durable_broker() -> Iterator[LocalBroker]:
    """A broker of the test's own whose log survives its crash (Tansu on a local S3 server), to kill.

    `RUNEVENTS_TEST_KAFKA` names the session's broker; a test that crashes one needs its own, so with
    it set these tests skip, saying why.
    """
    if os.environ.get(KAFKA_ENV):
        pytest.skip(f"{KAFKA_ENV} names the broker; the broker-crash tests kill a broker of their own")
    with service_directory("durable-kafka") as directory:
        broker = LocalBroker(directory, durable=True)
        try:
            broker.start()
        except (LocalBrokerError, LocalS3Error, ImportError) as error:
            missing_tool(f"a durable broker could not start: {str(error).splitlines()[0]}")
        try:
            yield broker
        finally:
            broker.shutdown()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """Say which PostgreSQL and broker the session ran against, outside output capture and progress dots."""
    for service, key in (("PostgreSQL", POSTGRES_DESCRIPTION), ("Kafka", KAFKA_DESCRIPTION)):
        description = config.stash.get(key, None)
        if description is not None:
            terminalreporter.write_line(f"runevents tests: {service} = {description}")


@pytest.fixture
async def pg_database(postgres_url: str) -> AsyncIterator[str]:
    """The asyncpg URL of a fresh, empty database on the session's server, dropped after the test."""
    server = make_url(postgres_url)
    name = f"test_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(_libpq_dsn(server))
    try:
        # template0: a pristine copy, unaffected by anything a test left in template1.
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    finally:
        await admin.close()
    yield server.set(database=name).render_as_string(hide_password=False)
    admin = await asyncpg.connect(_libpq_dsn(server))
    try:
        # FORCE ends the sessions a test left open (an undisposed engine) before dropping.
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def _libpq_dsn(url: URL) -> str:
    """`url` as a plain postgresql:// DSN that asyncpg.connect accepts."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)
