"""The projector against a real broker and PostgreSQL: dead letters, duplicates, the fence, waits."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from sqlalchemy.engine import make_url

from runevents.bus import producer as producer_module
from runevents.bus.producer import BrokerUnavailableError, EventProducer, EventTooLargeError
from runevents.bus.projector import Projector
from runevents.bus.read_your_writes import ProjectionTimeout
from runevents.bus.store import BusRunEventStore
from runevents.bus.topic import create_topic, dead_letter_topic
from runevents.events import encode_put, prepare_event
from runevents.store import open_store
from tests.bus.conftest import PARTITIONS, projector_process, running


def event(thread: str, n: int, **extra: Any) -> dict[str, Any]:
    """A message event of `thread` with distinct content."""
    return {
        "thread_id": thread,
        "run_id": "r1",
        "event_type": "llm.ai.response",
        "category": "message",
        "content": {"id": f"m-{thread}-{n}", "content": f"answer {n}"},
        **extra,
    }


def dsn(url: str) -> str:
    """A SQLAlchemy URL as the DSN asyncpg takes."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def fetch(url: str, query: str, *args: Any) -> list[Any]:
    """Rows of one query on its own connection."""
    connection = await asyncpg.connect(dsn(url))
    try:
        return list(await connection.fetch(query, *args))
    finally:
        await connection.close()


async def eventually(url: str, query: str, expected: Any, *, within_s: float = 30) -> None:
    """Wait until `query`'s single value equals `expected`."""
    deadline = time.monotonic() + within_s
    value = None
    while time.monotonic() < deadline:
        value = (await fetch(url, query))[0][0]
        if value == expected:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{query!r} gave {value!r}, not {expected!r}, within {within_s}s")


async def assert_gap_free(url: str, expected_rows: int) -> None:
    """Every thread's seqs run 1..n, event ids are unique, counters equal the rows."""
    rows = await fetch(url, "SELECT thread_id, seq, event_id FROM run_events ORDER BY thread_id, seq")
    assert len(rows) == expected_rows
    assert len({row["event_id"] for row in rows}) == expected_rows
    by_thread: dict[str, list[int]] = {}
    for row in rows:
        by_thread.setdefault(row["thread_id"], []).append(row["seq"])
    for thread, seqs in by_thread.items():
        assert seqs == list(range(1, len(seqs) + 1)), thread
    counters = await fetch(url, "SELECT thread_id, last_seq, event_count FROM thread_counters")
    assert {c["thread_id"]: (c["last_seq"], c["event_count"]) for c in counters} == {
        thread: (len(seqs), len(seqs)) for thread, seqs in by_thread.items()
    }


async def test_bad_records_go_to_the_dead_letter_table_and_topic_and_the_partition_moves_on(
    kafka_bootstrap: str, bus_db: str, topic: str, make_projector: Callable[..., Projector]
):
    await create_topic(kafka_bootstrap, dead_letter_topic(topic), partitions=1)
    good = prepare_event(event("t1", 0))
    wrong_key = encode_put(prepare_event(event("t2", 0)))
    garbage: list[tuple[bytes, bytes | None, str]] = [
        (b"t1", b"not json at all", "not JSON"),
        (b"t1", b'{"v": 9}', "envelope version 9"),
        (b"t1", orjson.dumps({**orjson.loads(encode_put(good)), "category": 7}), "category"),
        (b"t3", wrong_key, "is not its thread id 't2'"),
        (b"t1", None, "no value"),
    ]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for number, (key, value, _) in enumerate(garbage):
            await producer.send_and_wait(topic, value=value, key=key)
            await producer.send_and_wait(
                topic, value=encode_put(prepare_event(event("t1", number))), key=b"t1"
            )
    finally:
        await producer.stop()

    async with running(make_projector()) as projector:
        await eventually(bus_db, "SELECT count(*) FROM dead_letters", len(garbage))
        await eventually(bus_db, "SELECT count(*) FROM run_events", len(garbage))
    assert projector.dead == len(garbage)

    letters = {
        (letter["key"], letter["value"]): letter
        for letter in await fetch(bus_db, "SELECT reason, key, value, status FROM dead_letters")
    }
    assert set(letters) == {(key, value) for key, value, _ in garbage}
    for key, value, reason in garbage:
        assert reason in letters[key, value]["reason"]
        assert letters[key, value]["status"] == "open"
    await assert_gap_free(bus_db, len(garbage))

    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partition = TopicPartition(dead_letter_topic(topic), 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        found: list[Any] = []
        deadline = time.monotonic() + 20
        while len(found) < len(garbage) and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                found.extend(records)
    finally:
        await consumer.stop()
    assert sorted(record.value or b"" for record in found) == sorted(value or b"" for _, value, _ in garbage)
    assert all(dict(record.headers)["runevents-dead-reason"] for record in found)


async def test_a_second_copy_of_an_event_id_is_skipped(
    kafka_bootstrap: str, bus_db: str, topic: str, make_projector: Callable[..., Projector]
):
    copies = [prepare_event(event("t1", n)) for n in range(3)]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for prepared in [
            *copies,
            copies[1],
            copies[0],
            copies[1],
        ]:  # a producer's retries, or a re-run backfill
            await producer.send_and_wait(topic, value=encode_put(prepared), key=b"t1")
    finally:
        await producer.stop()
    async with running(make_projector()):
        await eventually(bus_db, "SELECT max(next_offset) FROM projection_offsets", 6)
    await assert_gap_free(bus_db, 3)
    rows = await fetch(bus_db, "SELECT event_id::text FROM run_events ORDER BY seq")
    assert [row[0] for row in rows] == [prepared.event_id for prepared in copies]


async def test_two_projectors_owning_the_same_partitions_never_write_a_batch_twice(
    bus_store: BusRunEventStore, bus_db: str, make_projector: Callable[..., Projector]
):
    first, second = make_projector(max_batch=7), make_projector(max_batch=7)
    async with running(first), running(second):
        for round_ in range(15):
            await bus_store.put_batch([event(f"t{n % 6}", round_ * 20 + n) for n in range(20)])
            await asyncio.sleep(0.02)
    await assert_gap_free(bus_db, 300)
    # Both fetched every record; whichever lost a race had its batch refused by the fence.
    assert first.stale_batches + second.stale_batches >= 1
    assert first.projected + second.projected == 300


async def test_writers_are_woken_by_the_commits_notification_not_by_polling(
    bus_db: str, topic: str, kafka_bootstrap: str, make_projector: Callable[..., Projector]
):
    # Polling once a minute: only the NOTIFY the fence statement queues can return these puts fast.
    store = BusRunEventStore(kafka_bootstrap, bus_db, topic=topic, poll_interval_s=60, wait_timeout_s=30)
    try:
        async with running(make_projector()):
            await store.put(**event("t1", 0))  # the first wait also polls once, when it starts listening
            started = time.monotonic()
            records = [await store.put(**event("t1", n)) for n in range(1, 11)]
            elapsed = time.monotonic() - started
        assert [record["seq"] for record in records] == list(range(2, 12))
        assert elapsed < 10, f"10 puts took {elapsed:.1f} s: woken by the poll, not by NOTIFY"
    finally:
        await store.close()


async def test_a_put_without_a_projector_times_out_saying_the_event_is_durable(
    bus_db: str, topic: str, kafka_bootstrap: str, make_projector: Callable[..., Projector]
):
    store = BusRunEventStore(kafka_bootstrap, bus_db, topic=topic, wait_timeout_s=0.5, poll_interval_s=0.1)
    try:
        with pytest.raises(ProjectionTimeout) as raised:
            await store.put(**event("t1", 0))
        assert "durable on the topic" in str(raised.value)
        published = await store.publish(**event("t1", 1))
        assert published.thread_id == "t1"
        assert published.offset >= 1
        async with running(make_projector()):
            record = await store.put(**event("t1", 2))
        assert record["seq"] == 3  # the timed-out put and the published one were projected first
        assert [m["content"]["id"] for m in await store.list_messages("t1")] == ["m-t1-0", "m-t1-1", "m-t1-2"]
    finally:
        await store.close()


async def test_an_event_larger_than_the_topic_takes_is_refused_before_it_is_sent(
    kafka_bootstrap: str, bus_db: str, make_projector: Callable[..., Projector], topic: str
):
    small = f"{topic}-small"
    await create_topic(kafka_bootstrap, small, partitions=1, max_message_bytes=4096)
    store = BusRunEventStore(kafka_bootstrap, bus_db, topic=small)
    try:
        with pytest.raises(EventTooLargeError, match=r"takes at most 4096 \(max.message.bytes\)") as raised:
            await store.put_batch([event("t1", 0), event("t1", 1, content="x" * 5000)])
        assert raised.value.index == 1
        async with running(Projector(kafka_bootstrap, bus_db, topic=small, partitions=[0])):
            assert (await store.put(**event("t1", 2)))["seq"] == 1  # nothing of the refused batch was sent
    finally:
        await store.close()


async def test_projectors_in_separate_processes_share_the_topic_in_a_group(
    bus_store: BusRunEventStore, kafka_bootstrap: str, bus_db: str, topic: str
):
    processes = [projector_process(kafka_bootstrap, bus_db, topic) for _ in range(2)]
    try:
        writers = [[event(f"t{(w * 7 + n) % 10}", w * 1000 + n) for n in range(60)] for w in range(4)]

        async def write(events: list[dict[str, Any]]) -> list[Any]:
            return [await bus_store.put(**e) for e in events[:20]] + await bus_store.put_batch(events[20:])

        results = await asyncio.gather(*(write(events) for events in writers))
        await assert_gap_free(bus_db, 240)
        # Every writer got its own records back, projected.
        for events, records in zip(writers, results, strict=True):
            assert [r["content"] for r in records] == [e["content"] for e in events]
        stored = await fetch(bus_db, "SELECT count(*) FROM projection_offsets")
        assert stored[0][0] == PARTITIONS
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        outputs = [process.communicate(timeout=60)[0].decode() for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs


async def test_idempotence_falls_back_where_the_broker_refuses_it_and_is_an_error_when_required(
    kafka_bootstrap: str, topic: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(producer_module, "_REFUSED_IDEMPOTENCE", set())  # as in a fresh process
    automatic = EventProducer(kafka_bootstrap, topic=topic)
    try:
        published = await automatic.publish_puts([prepare_event(event("t1", 0))])
        assert published[0].thread_id == "t1"
        # Apache Kafka grants a producer id; Tansu refuses InitProducerId, and the fall-back is logged.
        assert automatic.idempotent is ("refuses idempotent producers" not in caplog.text)
    finally:
        await automatic.stop()
    if automatic.idempotent is False:
        # Refused once, not asked again in this process: no second refusal, no second warning.
        caplog.clear()
        again = EventProducer(kafka_bootstrap, topic=topic)
        await again.start()
        await again.stop()
        assert again.idempotent is False
        assert "refuses idempotent producers" not in caplog.text
        required = EventProducer(kafka_bootstrap, topic=topic, enable_idempotence=True)
        with pytest.raises(BrokerUnavailableError, match="refused an idempotent producer"):
            await required.start()
        await required.stop()


async def test_open_store_opens_the_bus_from_a_kafka_url(
    kafka_bootstrap: str, bus_db: str, topic: str, make_projector: Callable[..., Projector]
):
    database = quote(bus_db, safe="")
    store = open_store(f"kafka://{kafka_bootstrap}/{topic}?database={database}&projection=main")
    assert isinstance(store, BusRunEventStore)
    try:
        async with running(make_projector()):
            assert (await store.put(**event("t1", 0)))["seq"] == 1
    finally:
        await store.close()
    with pytest.raises(ValueError, match="names the brokers and the read tables' database"):
        open_store(f"kafka://{kafka_bootstrap}/{topic}")
