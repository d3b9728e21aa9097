"""The usage consumer on a real broker and PostgreSQL: totals, unknown usage, deletes, garbage, replays."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer

from runevents.bus.store import BusRunEventStore
from runevents.crypto.keyring import Keyring, KeyUnavailableError, new_key
from runevents.errors import SchemaOutdatedError
from runevents.events import prepare_event
from runevents.tables.migrate import upgrade_async
from runevents.usage import UsageConsumer, UsageReader
from tests.bus.test_projector import fetch
from tests.usage.caught_up import wait_caught_up
from tests.usage.load import Expected, model_call, publish, thread_totals


@contextlib.asynccontextmanager
async def consuming(consumer: UsageConsumer) -> AsyncIterator[UsageConsumer]:
    """Run `consumer` as a task while the block runs; stop it cleanly afterwards."""
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        yield consumer
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


@pytest.fixture
async def store(kafka_bootstrap: str, bus_db: str, topic: str) -> AsyncIterator[BusRunEventStore]:
    """A bus store of the test's topic, used only to publish (no projector runs)."""
    bus = BusRunEventStore(kafka_bootstrap, bus_db, topic=topic)
    yield bus
    await bus.close()


async def test_usage_equals_an_independent_sum_through_deletes_and_garbage(
    kafka_bootstrap: str, bus_db: str, topic: str, store: BusRunEventStore
) -> None:
    rng = random.Random(17)
    expected = Expected()
    group_a, group_b = f"usage-a-{uuid.uuid4().hex[:8]}", f"usage-b-{uuid.uuid4().hex[:8]}"
    await publish(store, rng, 2000, expected)
    # A run and a thread deleted on the topic take their usage with them; a call after the delete stays.
    await store.producer.publish_delete_run("t001", "r1")
    expected.delete_run("t001", "r1")
    await store.producer.publish_delete_thread("t002")
    expected.delete_thread("t002")
    await store.publish_batch([model_call(rng, "t002", "r9", expected)])
    # Retention's expiry takes events, not what they cost: the usage of expired calls stays.
    await store.producer.publish_expire("t003", list(range(1, 50)))
    # Records nobody can decode are skipped and counted; the partition goes on.
    raw = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await raw.start()
    try:
        await raw.send_and_wait(topic, value=b"not json at all", key=b"t003")
        await raw.send_and_wait(topic, value=b'{"v": 9}', key=b"t003")
    finally:
        await raw.stop()
    await publish(store, rng, 500, expected)

    async with consuming(UsageConsumer(kafka_bootstrap, bus_db, topic=topic, group=group_a)) as consumer:
        await wait_caught_up(kafka_bootstrap, topic, bus_db, group_a)
    assert await thread_totals(bus_db) == expected.threads()
    assert consumer.applied.undecodable == 2
    assert consumer.applied.deletes == 2
    assert consumer.applied.bad_usage > 0
    assert consumer.applied.without_usage > 0
    # The projector's business stays its own: no dead letters written, no projection offsets.
    assert (await fetch(bus_db, "SELECT count(*) FROM dead_letters"))[0][0] == 0
    assert (await fetch(bus_db, "SELECT count(*) FROM projection_offsets"))[0][0] == 0

    # A fresh group from offset 0 into a fresh schema gives the same totals.
    schema = f"usage_{uuid.uuid4().hex[:8]}"
    await upgrade_async(bus_db, schema=schema)
    async with consuming(UsageConsumer(kafka_bootstrap, bus_db, topic=topic, group=group_b, schema=schema)):
        await wait_caught_up(kafka_bootstrap, topic, bus_db, group_b, schema=schema)
    assert await thread_totals(bus_db, schema) == expected.threads()

    # A restarted group goes on from its stored offsets: what comes later is counted once.
    await publish(store, rng, 300, expected)
    async with consuming(UsageConsumer(kafka_bootstrap, bus_db, topic=topic, group=group_a)) as again:
        await wait_caught_up(kafka_bootstrap, topic, bus_db, group_a)
    assert await thread_totals(bus_db) == expected.threads()
    assert again.applied.undecodable == 0  # it did not read the garbage again


async def test_the_reader_sums_per_model_caller_and_run_and_scopes_by_user(
    kafka_bootstrap: str, bus_db: str, topic: str, store: BusRunEventStore
) -> None:
    content = {"type": "ai", "id": "m1", "content": "", "response_metadata": {"model_name": "gpt-4o"}}
    calls = [
        ("r1", "lead_agent", {"input_tokens": 10, "output_tokens": 5}, "alice"),
        ("r1", "subagent:research", {"input_tokens": 1, "output_tokens": 2, "total_tokens": 4}, "alice"),
        ("r2", "middleware:title", {"prompt_tokens": 7, "completion_tokens": 3}, "alice"),
        ("r2", "lead_agent", None, "alice"),
        ("r2", "lead_agent", {"input_tokens": 100, "output_tokens": 100}, "bob"),
    ]
    await store.publish_batch(
        [
            {
                "thread_id": "t1",
                "run_id": run,
                "event_type": "llm.ai.response",
                "category": "message",
                "content": content if run == "r1" else {**content, "response_metadata": {}},
                "metadata": {"caller": caller, **({"usage": usage} if usage else {})},
                "user_id": user,
            }
            for run, caller, usage, user in calls
        ]
    )
    group = f"usage-{uuid.uuid4().hex[:8]}"  # a group of its own: no wait for an earlier test's member
    async with consuming(UsageConsumer(kafka_bootstrap, bus_db, topic=topic, group=group)):
        await wait_caught_up(kafka_bootstrap, topic, bus_db, group)
    reader = UsageReader(bus_db)
    try:
        alice = await reader.thread_usage("t1", "alice")
        everyone = await reader.thread_usage("t1")
        nobody = await reader.thread_usage("t-none")
    finally:
        await reader.close()
    assert alice == {
        "thread_id": "t1",
        "total_tokens": 29,
        "total_input_tokens": 18,
        "total_output_tokens": 10,
        "total_runs": 2,
        "by_model": {"gpt-4o": {"tokens": 19, "runs": 1}, "unknown": {"tokens": 10, "runs": 1}},
        "by_caller": {"lead_agent": 15, "subagent": 4, "middleware": 10},
        "context_usage": None,
        "by_run": {
            "r1": {
                "total_tokens": 19,
                "input_tokens": 11,
                "output_tokens": 7,
                "calls": 2,
                "calls_without_usage": 0,
            },
            "r2": {
                "total_tokens": 10,
                "input_tokens": 7,
                "output_tokens": 3,
                "calls": 2,
                "calls_without_usage": 1,
            },
        },
        "cache_read_tokens": 0,
        "cache_creation_tokens": 0,
        "reasoning_tokens": 0,
        "calls": 4,
        "calls_without_usage": 1,
    }
    assert everyone is not None
    assert everyone["total_tokens"] == 229
    assert everyone["calls"] == 5
    assert nobody is not None
    assert nobody["calls"] == 0
    assert nobody["total_tokens"] == 0


async def test_put_if_absent_counts_a_call_only_when_the_projector_would_write_it(
    kafka_bootstrap: str, bus_db: str, topic: str, store: BusRunEventStore
) -> None:
    expected = Expected()
    rng = random.Random(3)
    first = prepare_event(model_call(rng, "t005", "r1", expected))
    second = prepare_event(model_call(rng, "t005", "r1", Expected()))  # the run has one: not written
    other_run = prepare_event(model_call(rng, "t005", "r2", expected))
    await store.producer.publish_puts([first, second, other_run], op="put_if_absent")
    group = f"usage-{uuid.uuid4().hex[:8]}"  # a group of its own: no wait for an earlier test's member
    async with consuming(UsageConsumer(kafka_bootstrap, bus_db, topic=topic, group=group)):
        await wait_caught_up(kafka_bootstrap, topic, bus_db, group)
    assert await thread_totals(bus_db) == expected.threads()


async def test_a_database_not_upgraded_is_refused_before_joining(
    kafka_bootstrap: str, pg_database: str, topic: str
) -> None:
    consumer = UsageConsumer(kafka_bootstrap, pg_database, topic=topic)
    with pytest.raises(SchemaOutdatedError, match="runevents db upgrade"):
        await consumer.run()


async def test_sealed_records_are_counted_with_the_keys_and_stop_a_consumer_without_them(
    kafka_bootstrap: str, bus_db: str, topic: str
) -> None:
    keyring = Keyring.of(new_key())
    sealing = BusRunEventStore(kafka_bootstrap, bus_db, topic=topic, keyring=keyring)
    try:
        await sealing.publish_batch(
            [
                {
                    "thread_id": "t1",
                    "run_id": "r1",
                    "event_type": "llm.ai.response",
                    "category": "message",
                    "content": {
                        "type": "ai",
                        "id": "m1",
                        "content": "",
                        "response_metadata": {"model_name": "m"},
                    },
                    "metadata": {"caller": "lead_agent", "usage": {"input_tokens": 3, "output_tokens": 4}},
                }
            ]
        )
    finally:
        await sealing.close()
    blind = UsageConsumer(kafka_bootstrap, bus_db, topic=topic, group=f"usage-{uuid.uuid4().hex[:8]}")
    try:
        with pytest.raises(KeyUnavailableError, match="this consumer has no keyring"):
            await asyncio.wait_for(blind.run(), timeout=60)
    finally:
        await blind.close()
    group = f"usage-{uuid.uuid4().hex[:8]}"
    async with consuming(UsageConsumer(kafka_bootstrap, bus_db, topic=topic, group=group, keyring=keyring)):
        await wait_caught_up(kafka_bootstrap, topic, bus_db, group)
    reader = UsageReader(bus_db)
    try:
        usage = await reader.thread_usage("t1")
    finally:
        await reader.close()
    assert usage is not None
    assert (usage["total_input_tokens"], usage["total_output_tokens"], usage["total_tokens"]) == (3, 4, 7)
