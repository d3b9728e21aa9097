"""A projector (and the writers' watcher) that fails at start when it must, and always stops when told.

Each test here reproduces a way the projector could not be stopped or failed late: read tables never
migrated or a wrong schema (it joined the group and retried for ever), the rebalance listener's and
the batch recovery's retry loops (deaf to SIGTERM and cancellation), a watcher closing on a database
that does not answer, names that are refused only once something was made, partitions that do not exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy.engine import make_url

from runevents.bus.projector import Projector
from runevents.bus.projector.loop import PartitionsError
from runevents.bus.read_your_writes import ProjectionWatcher
from runevents.bus.store import BusRunEventStore
from runevents.bus.topic import TopicMissingError, create_topic
from runevents.errors import SchemaOutdatedError
from runevents.names import InvalidNameError
from runevents.ops.promote import promote
from runevents.ops.replay import ReplayError, replay
from runevents.tables.migrate import upgrade_async
from tests.bus.conftest import PARTITIONS, bus_db, projector_process, topic
from tests.faults.projectors import ProjectorProcess

__all__ = ["bus_db", "topic"]

RENAME_OFFSETS = "ALTER TABLE projection_offsets RENAME TO projection_offsets_gone"


def dsn(url: str) -> str:
    """`url` as the plain DSN asyncpg connects with."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def execute(url: str, statement: str) -> None:
    connection = await asyncpg.connect(dsn(url))
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def fetch(url: str, query: str, *args: Any) -> list[Any]:
    connection = await asyncpg.connect(dsn(url))
    try:
        return list(await connection.fetch(query, *args))
    finally:
        await connection.close()


async def wait_for_output(projector: ProjectorProcess, text: str, *, count: int = 1, within_s: float) -> None:
    """Wait until the process printed `text` `count` times; fail with its output if it did not."""
    deadline = time.monotonic() + within_s
    while projector.output().count(text) < count:
        if projector.process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no {count} x {text!r} from the projector:\n{projector.output()}")
        await asyncio.sleep(0.02)


async def ended_within(projector: ProjectorProcess, how: signal.Signals | None, within_s: float) -> float:
    """Send `how` (if any), wait for the process to end: how long it took; fail if not within `within_s`."""
    started = time.monotonic()
    if how is not None:
        projector.process.send_signal(how)
    try:
        await asyncio.to_thread(projector.process.wait, within_s)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"the projector still ran {within_s:g} s after {how!r}:\n{projector.output()}"
        ) from None
    took = time.monotonic() - started
    await asyncio.to_thread(projector.wait_killed)  # its output read to the end
    return took


def assert_one_line_warnings(output: str) -> None:
    """No log line quotes a statement, its parameters or SQLAlchemy's background link."""
    for marker in ("[SQL:", "[parameters:", "Background on this error", "Traceback"):
        assert marker not in output, f"{marker!r} in the projector's output:\n{output}"


async def group_members(kafka: str, group: str) -> int:
    """How many members the broker lists in consumer group `group` (0 if it has none or no such group)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        groups = {entry[0] for entry in await admin.list_consumer_groups()}
        if group not in groups:
            return 0
        described = await admin.describe_consumer_groups([group])
        return sum(len(entry.groups[0][5]) for entry in described if entry.groups)
    finally:
        await admin.close()


async def topic_names(kafka: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def started(kafka: str, url: str, topic: str, *options: str) -> AsyncIterator[ProjectorProcess]:
    """`runevents project` in a process of its own; killed afterwards if it still runs."""
    projector = ProjectorProcess("projector", projector_process(kafka, url, topic, *options))
    try:
        yield projector
    finally:
        await asyncio.to_thread(projector.wait_killed)


@contextlib.asynccontextmanager
async def group_member(kafka: str, group: str, topic: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A second member of `group`, polling: its joining makes the group rebalance."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka,
        group_id=group,
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
        enable_auto_commit=False,
    )
    await consumer.start()
    consumer.subscribe([topic])

    async def poll() -> None:
        while True:
            await consumer.getmany(timeout_ms=100)

    polling = asyncio.create_task(poll())
    try:
        yield consumer
    finally:
        polling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await polling
        await consumer.stop()


class Gate:
    """A TCP proxy in front of PostgreSQL that can become a black hole: connections taken, nothing answered.

    That is a database that is unreachable rather than down: no refusal, no reset, only silence.
    """

    def __init__(self, url: str) -> None:
        self._target = make_url(url)
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._pumps: set[asyncio.Task[None]] = set()
        self.silent = False
        self.port = 0

    def url(self, url: str) -> str:
        """`url` through this gate."""
        return make_url(url).set(host="127.0.0.1", port=self.port).render_as_string(hide_password=False)

    async def __aenter__(self) -> Gate:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        for pump in self._pumps:
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        if self.silent:
            return  # accepted, never answered
        upstream_reader, upstream_writer = await asyncio.open_connection(self._target.host, self._target.port)
        self._writers.append(upstream_writer)
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            pump = asyncio.create_task(self._pump(source, sink))
            self._pumps.add(pump)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while data := await source.read(65536):
            if self.silent:
                await asyncio.Event().wait()  # the bytes go nowhere, and nothing more is read
            sink.write(data)
            await sink.drain()


# --- fails at start: tables never migrated, a wrong schema ---------------------------------------


@pytest.mark.parametrize("case", ["never-migrated", "wrong-schema"])
async def test_project_on_tables_not_at_head_fails_at_start_in_one_line_and_never_joins_the_group(
    kafka_bootstrap: str, pg_database: str, topic: str, case: str
):
    options: tuple[str, ...] = ()
    hint = f"run: runevents db upgrade {pg_database}"
    if case == "wrong-schema":
        await upgrade_async(pg_database)  # the tables are there, in another schema than the one named
        options = ("--schema", "not_migrated")
        hint += " --schema not_migrated"
    async with started(kafka_bootstrap, pg_database, topic, *options) as projector:
        took = await ended_within(projector, None, within_s=10)
        output = projector.output()
    assert projector.process.returncode == 1, output
    assert output.count("\n") == 1, output
    assert output.startswith("error: "), output
    assert output.rstrip().endswith(hint), output
    assert took < 10
    assert await group_members(kafka_bootstrap, f"runevents-projector-main-{topic}") == 0


async def test_a_projector_on_tables_not_at_head_fails_before_any_client_starts(
    kafka_bootstrap: str, pg_database: str, topic: str
):
    # The brokers are not even asked: a closed port would fail the start otherwise.
    projector = Projector("127.0.0.1:9", pg_database, topic=topic, schema="nowhere")
    with pytest.raises(SchemaOutdatedError) as raised:
        await asyncio.wait_for(projector.run(), timeout=10)
    message = str(raised.value)
    assert "\n" not in message
    assert "(schema nowhere) are at revision none" in message
    assert message.endswith(f"run: runevents db upgrade {pg_database} --schema nowhere")


# --- every retry loop ends when told to stop ------------------------------------------------------


async def test_a_projector_stuck_retrying_a_new_assignment_ends_on_sigterm(
    kafka_bootstrap: str, bus_db: str, topic: str
):
    async with started(kafka_bootstrap, bus_db, topic) as projector:
        await wait_for_output(projector, "projection 'main' of", within_s=60)  # it owns the partitions
        await execute(bus_db, RENAME_OFFSETS)
        # A second member: the group rebalances, and the projector cannot read its new partitions' offsets.
        async with group_member(kafka_bootstrap, f"runevents-projector-main-{topic}", topic):
            await wait_for_output(
                projector, "reading the stored offsets of new partitions failed", count=2, within_s=60
            )
            await ended_within(projector, signal.SIGTERM, within_s=10)
    assert projector.process.returncode == 0, projector.output()
    assert_one_line_warnings(projector.output())


async def test_a_cancelled_projector_stuck_retrying_a_new_assignment_ends(
    kafka_bootstrap: str, bus_db: str, topic: str, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="runevents")
    projector = Projector(
        kafka_bootstrap,
        bus_db,
        topic=topic,
        consumer_options={"session_timeout_ms": 2000, "heartbeat_interval_ms": 500},
    )
    running = asyncio.create_task(projector.run())
    try:
        deadline = time.monotonic() + 60
        while len(projector.assignment) < PARTITIONS:
            assert time.monotonic() < deadline, "the projector got no partitions"
            assert not running.done(), "the projector ended"
            await asyncio.sleep(0.05)
        await execute(bus_db, RENAME_OFFSETS)
        async with group_member(kafka_bootstrap, f"runevents-projector-main-{topic}", topic):
            while "reading the stored offsets of new partitions failed" not in caplog.text:
                assert time.monotonic() < deadline, "no rebalance reached the projector"
                await asyncio.sleep(0.05)
            running.cancel()
            done, _ = await asyncio.wait([running], timeout=10)
            assert done, "the cancelled projector still ran after 10 s"
    finally:
        running.cancel()
    assert running.cancelled()
    assert_one_line_warnings(caplog.text)


async def test_a_projector_stuck_recovering_from_a_failed_batch_ends_at_once_on_sigterm(
    kafka_bootstrap: str, bus_db: str, topic: str
):
    partitions = ",".join(str(n) for n in range(PARTITIONS))
    async with started(kafka_bootstrap, bus_db, topic, "--partitions", partitions) as projector:
        await wait_for_output(projector, "projection 'main' of", within_s=60)
        await execute(bus_db, RENAME_OFFSETS)
        store = BusRunEventStore(kafka_bootstrap, bus_db, topic=topic)
        try:
            await store.publish_batch(
                [{"thread_id": "t", "run_id": "r", "event_type": "x", "category": "message"}]
            )
        finally:
            await store.close()
        # The batch fails, and so does every try to read the stored offsets again: by the eighth
        # warning the back-off has reached its longest wait (5 s), which SIGTERM must cut short.
        await wait_for_output(projector, "stored offsets", count=8, within_s=60)
        took = await ended_within(projector, signal.SIGTERM, within_s=10)
    assert projector.process.returncode == 0, projector.output()
    assert took < 4, f"it took {took:.1f} s to stop:\n{projector.output()}"
    assert_one_line_warnings(projector.output())
    assert 'relation "projection_offsets" does not exist' in projector.output()


async def test_a_watcher_closes_at_once_while_its_database_does_not_answer(bus_db: str, topic: str):
    async with Gate(bus_db) as gate:
        watcher = ProjectionWatcher(gate.url(bus_db), projection="main", topic=topic, poll_interval_s=0.1)
        waiting = asyncio.create_task(watcher.wait({0: 5}, timeout_s=60))  # nothing projects it
        await asyncio.sleep(0.5)  # listening, and polling for the waiter
        gate.silent = True
        await asyncio.sleep(1)  # a poll in flight, unanswered
        started_at = time.monotonic()
        closing = asyncio.create_task(watcher.close())
        # Not wait_for: it would wait for a close that swallows its cancellation, and hang the test.
        await asyncio.wait([closing], timeout=10)
        took = time.monotonic() - started_at
        await asyncio.wait([waiting], timeout=1)
    # The gate is gone, its connections aborted: whatever still waited on the database ends now.
    await asyncio.wait([closing, waiting], timeout=10)
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    assert took < 5, f"closing the watcher took {took:.1f} s"
    assert waiting.cancelled()


# --- names are refused before anything is made ---------------------------------------------------


def named(options: dict[str, str]) -> str:
    """A test id for a case of names: `key=value,...`, values cut short."""
    return ",".join(f"{key}={value[:12]}" for key, value in options.items())


@pytest.mark.parametrize(
    "options",
    [
        {"schema": "Bad-Name"},
        {"schema": "pg_temp_x"},
        {"projection": "information_schema"},
        {"projection": "a" * 64},
        {"topic": "bad topic"},
        {"topic": ".."},
    ],
    ids=named,
)
def test_a_projector_refuses_a_bad_name_before_opening_anything(options: dict[str, Any]):
    with pytest.raises(InvalidNameError):
        Projector("127.0.0.1:9", "postgresql://u@127.0.0.1:9/db", **options)


@pytest.mark.parametrize(
    "options",
    [{"projection": "Bad"}, {"topic": "no/slash"}, {"schema": "pg_x"}],
    ids=named,
)
def test_the_watcher_refuses_a_bad_name(options: dict[str, Any]):
    with pytest.raises(InvalidNameError):
        ProjectionWatcher(
            "postgresql://u@127.0.0.1:9/db", **{"projection": "main", "topic": "run-events", **options}
        )


@pytest.mark.parametrize(
    "options",
    [{"projection": "information_schema"}, {"projection": "fine", "schema": "pg_fine"}],
    ids=named,
)
async def test_replay_refuses_a_reserved_name_and_creates_nothing(
    kafka_bootstrap: str, bus_db: str, topic: str, options: dict[str, Any]
):
    with pytest.raises(InvalidNameError):
        await replay(kafka_bootstrap, bus_db, topic=topic, **options)
    schema = options.get("schema", options["projection"])
    made = await fetch(
        bus_db, "SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = 'run_events'", schema
    )
    assert made == []


async def test_replay_refuses_a_bad_topic_name(kafka_bootstrap: str, bus_db: str):
    with pytest.raises(InvalidNameError, match="topic name 'no such'"):
        await replay(kafka_bootstrap, bus_db, projection="fine", topic="no such")


@pytest.mark.parametrize(
    "options",
    [{"projection": "pg_x"}, {"projection": "main", "serving": "information_schema"}],
    ids=named,
)
async def test_promote_refuses_a_reserved_name_and_creates_nothing(
    kafka_bootstrap: str, bus_db: str, topic: str, options: dict[str, Any]
):
    with pytest.raises(InvalidNameError):
        await promote(kafka_bootstrap, bus_db, topic=topic, **options)
    assert await fetch(bus_db, "SELECT 1 FROM pg_namespace WHERE nspname = 'serving'") == []


@pytest.mark.parametrize("name", ["t" * 237, "bad topic", "ä-topic"], ids=["too-long", "space", "non-ascii"])
async def test_topic_create_refuses_a_bad_name_and_creates_nothing(kafka_bootstrap: str, name: str):
    with pytest.raises(InvalidNameError):
        await create_topic(kafka_bootstrap, name, partitions=1)
    assert name not in await topic_names(kafka_bootstrap)


# --- a topic or partitions that do not exist -------------------------------------------------------


async def test_replay_of_a_topic_that_does_not_exist_is_an_error_and_creates_nothing(
    kafka_bootstrap: str, bus_db: str
):
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(ReplayError, match=f"topic '{missing}' does not exist"):
        await replay(kafka_bootstrap, bus_db, projection="from_nothing", topic=missing)
    assert await fetch(bus_db, "SELECT 1 FROM pg_namespace WHERE nspname = 'from_nothing'") == []
    assert missing not in await topic_names(kafka_bootstrap)


async def test_a_projector_given_partitions_beyond_the_topics_count_fails_at_start(
    kafka_bootstrap: str, bus_db: str, topic: str
):
    projector = Projector(kafka_bootstrap, bus_db, topic=topic, partitions=[0, PARTITIONS, PARTITIONS + 3])
    with pytest.raises(PartitionsError) as raised:
        await asyncio.wait_for(projector.run(), timeout=10)
    assert str(raised.value) == (
        f"topic {topic!r} has partitions 0-{PARTITIONS - 1} ({PARTITIONS}); "
        f"there is no partition {PARTITIONS}, {PARTITIONS + 3}"
    )


async def test_a_projector_given_partitions_of_a_topic_that_does_not_exist_fails_and_creates_none(
    kafka_bootstrap: str, bus_db: str
):
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    projector = Projector(kafka_bootstrap, bus_db, topic=missing, partitions=[0])
    with pytest.raises(TopicMissingError, match=f"topic '{missing}' does not exist"):
        await asyncio.wait_for(projector.run(), timeout=10)
    assert missing not in await topic_names(kafka_bootstrap)
