"""The operator's side against the real broker and PostgreSQL: topic create, schema, metrics, health."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from runevents.bus.projector import Projector
from runevents.bus.store import BusRunEventStore
from runevents.devstack.postgres import free_port
from runevents.events import SCHEMA_FILE
from runevents.metrics import serve_metrics
from runevents.settings import load_settings
from runevents.tables.writes import libpq_dsn as dsn
from tests.bus.conftest import running
from tests.bus.test_projector import event
from tests.ops.test_dead_letters import cli


def projector_command(kafka: str, url: str, topic: str) -> list[str]:
    """`runevents project` on the test's topic, without a metrics port."""
    command = [sys.executable, "-m", "runevents.cli", "project", "--kafka", kafka, "--database", url]
    return [*command, "--topic", topic, "--metrics-port", "0", "--session-timeout-ms", "2000"]


async def get(port: int, path: str) -> tuple[int, str]:
    """A plain HTTP GET on 127.0.0.1: the status code and the body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    await writer.drain()
    response = (await reader.read()).decode()
    writer.close()
    head, _, body = response.partition("\r\n\r\n")
    return int(head.split(" ")[1]), body


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page by (name, sorted labels)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_topic_create_makes_a_topic_kept_forever_and_leaves_an_existing_one_alone(kafka_bootstrap: str):
    name = f"ops-{uuid.uuid4().hex[:8]}"
    args = ("topic", "create", "--kafka", kafka_bootstrap, "--topic", name, "--partitions", "3")
    result = await cli(*args, "--max-message-bytes", "2097152")
    assert result.exit_code == 0, result.output
    assert result.output == (
        f"created topic {name!r} at {kafka_bootstrap}: 3 partitions, replication factor 1, "
        "retention.ms=-1, max.message.bytes=2097152\n"
    )
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([name])
        configs = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
    finally:
        await admin.close()
    assert len(described["partitions"]) == 3
    entries = {
        entry[0]: entry[1] for response in configs for resource in response.resources for entry in resource[4]
    }
    assert entries.get("retention.ms") == "-1"

    again = await cli(*args)
    assert again.exit_code == 0, again.output
    assert again.output == f"topic {name!r} exists already at {kafka_bootstrap}: left as it is\n"

    refused = await cli("topic", "create", "--kafka", kafka_bootstrap, "--partitions", "0")
    assert refused.exit_code == 2  # typer's own check of the range, before anything is asked of the broker


async def test_schema_prints_the_published_schema_file():
    result = await cli("schema")
    assert result.exit_code == 0
    assert result.output == SCHEMA_FILE.read_text(encoding="utf-8")


async def test_the_projector_serves_its_metrics_and_is_ready_only_with_partitions_and_a_database(
    kafka_bootstrap: str,
    bus_db: str,
    topic: str,
    bus_store: BusRunEventStore,
    make_projector: Callable[..., Projector],
):
    projector = make_projector()
    port = free_port()
    async with serve_metrics(projector, "127.0.0.1", port):
        # Not started: alive, but not ready, and it says why.
        assert await get(port, "/livez") == (200, "alive\n")
        assert await get(port, "/healthz") == (503, "no partitions assigned\n")
        async with running(projector):
            await bus_store.put_batch([event(f"t{n}", n) for n in range(20)])
            producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
            await producer.start()
            try:
                await producer.send_and_wait(topic, value=b"not json", key=b"t1")
            finally:
                await producer.stop()
            await bus_store.put(**event("t1", 99))  # behind the garbage: applied once it is dead-lettered
            assert await get(port, "/healthz") == (200, "ready\n")
            status, page = await get(port, "/metrics")
            assert status == 200
    found = samples(page)
    labels = (("projection", "main"), ("topic", topic))
    assert found[("runevents_projector_events_total", labels)] == 21
    assert found[("runevents_dead_letters_total", labels)] == 1
    assert found[("runevents_projector_batch_records_count", labels)] >= 1
    assert found[("runevents_projector_batch_records_sum", labels)] == 22
    assert found[("runevents_projector_batch_seconds_count", labels)] >= 1
    lag = {key: value for key, value in found.items() if key[0] == "runevents_projector_lag_records"}
    assert {dict(key[1])["partition"] for key in lag} == {"0", "1", "2", "3"}
    assert all(value == 0 for value in lag.values())
    assert found[("runevents_read_your_writes_wait_seconds_count", (("topic", topic),))] == 2
    assert await get_refused(port)


async def get_refused(port: int) -> bool:
    """Whether nothing listens on the port any more (the block ended, so the server closed)."""
    try:
        await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    return False


async def test_healthz_says_when_the_database_does_not_answer(
    bus_db: str, make_projector: Callable[..., Projector]
):
    projector = make_projector()
    port = free_port()
    database = make_url(bus_db).database
    admin = await asyncpg.connect(dsn(str(make_url(bus_db).set(database="postgres"))))
    try:
        async with serve_metrics(projector, "127.0.0.1", port), running(projector):
            while not projector.assignment:  # noqa: ASYNC110 (the projector's state, not an event of ours)
                await asyncio.sleep(0.05)
            assert await get(port, "/healthz") == (200, "ready\n")
            # No new connections, and the open ones ended: the database is gone as far as it knows.
            await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", database
            )
            status, body = await get(port, "/healthz")
            await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
    finally:
        await admin.close()
    assert status == 503
    assert body.startswith("database did not answer: ")


@pytest.mark.parametrize("path", ["/", "/metrics/extra"])
async def test_other_paths_are_not_found(make_projector: Callable[..., Projector], path: str):
    port = free_port()
    async with serve_metrics(make_projector(), "127.0.0.1", port):
        assert await get(port, path) == (404, "/metrics, /healthz or /livez\n")


async def test_a_projector_logging_at_debug_never_shows_the_database_password(
    kafka_bootstrap: str, bus_db: str, topic: str, bus_store: BusRunEventStore
):
    secret = "pr0jector-s3cret"
    # The test server trusts local connections: the password is carried everywhere and checked nowhere.
    url = make_url(bus_db).set(password=secret).render_as_string(hide_password=False)
    process = await asyncio.create_subprocess_exec(
        *projector_command(kafka_bootstrap, url, topic),
        env={**os.environ, "RUNEVENTS_LOG_LEVEL": "DEBUG", "PYTHONUNBUFFERED": "1"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        await bus_store.put_batch([event(f"t{n}", n) for n in range(10)])  # projected by it
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    log = output.decode()
    assert process.returncode == 0, log
    assert "applied" in log  # DEBUG lines were written
    assert secret not in log

    # A database that refuses: the error says what failed, without the password.
    closed = make_url(url).set(port=free_port()).render_as_string(hide_password=False)
    failed = await asyncio.to_thread(
        subprocess.run,
        projector_command(kafka_bootstrap, closed, topic),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert failed.returncode == 1
    assert failed.stderr.splitlines()[-1].startswith(
        "error: projector did not start: the database postgresql+asyncpg://postgres:***@127.0.0.1:"
    )
    assert "refused or did not answer: ConnectionRefusedError" in failed.stderr
    assert secret not in failed.stdout + failed.stderr


async def test_a_bus_store_from_settings_writes_and_reads_back(
    kafka_bootstrap: str, bus_db: str, topic: str, make_projector: Callable[..., Projector]
):
    settings = load_settings({"database_url": bus_db, "kafka": kafka_bootstrap, "topic": topic}).settings
    store = settings.bus_store(wait_timeout_s=20)
    try:
        async with running(make_projector()):
            record = await store.put(**event("t1", 1))
        assert record["seq"] == 1
        assert [r["event_id"] for r in await store.list_messages("t1")] == [record["event_id"]]
    finally:
        await store.close()


async def test_a_projector_whose_brokers_do_not_answer_says_so_and_leaves_nothing_open(bus_db: str):
    closed = f"127.0.0.1:{free_port()}"
    failed = await asyncio.to_thread(
        subprocess.run,
        projector_command(closed, bus_db, "run-events"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert failed.returncode == 1
    assert failed.stderr.splitlines()[-1].startswith(
        f"error: projector did not start: the brokers at {closed} did not answer: KafkaConnectionError: "
    )
    assert "Unclosed" not in failed.stderr  # the dead-letter producer it had started is stopped
