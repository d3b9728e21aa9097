"""Sealed records on the bus (issue 21): clear only where they must be, opened by the projector with the
thread's key, erased for good once the key is destroyed; the rules for a wrong or a cached key."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer

from runevents.bus.projector import Projector
from runevents.bus.store import BusRunEventStore
from runevents.crypto.keyring import Keyring, KeyUnavailableError, new_key
from runevents.crypto.sealing import SEALED_HEADER
from runevents.errors import ErasureUnavailableError
from runevents.lifecycle.blobs import FileBlobStore
from runevents.tables.keys import ThreadKeys
from runevents.tables.sql import engine_for
from runevents.tables.writes import libpq_dsn
from tests.bus.conftest import running

KEYRING = Keyring.of(new_key())


def _message(thread_id: str, text: str, **fields: Any) -> dict[str, Any]:
    return {"thread_id": thread_id, "run_id": "r1", "event_type": "ai_message", "category": "message",
            "content": {"id": f"m-{uuid.uuid4().hex[:8]}", "content": text},
            "metadata": {"note": text}, **fields}  # fmt: skip


def sealed_projector(kafka: str, url: str, topic: str) -> Projector:
    """A projector of the test topic's four partitions that holds the keyring."""
    return Projector(kafka, url, topic=topic, partitions=range(4), keyring=KEYRING)


async def raw_records(kafka: str, topic: str) -> list[Any]:
    """Every record of the topic, as a consumer without keys reads it."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    try:
        records: list[Any] = []
        while batch := await consumer.getmany(timeout_ms=1000):
            records += [record for part in batch.values() for record in part]
        return records
    finally:
        await consumer.stop()


@pytest.fixture
async def sealing(kafka_bootstrap: str, bus_db: str, topic: str) -> AsyncIterator[BusRunEventStore]:
    store = BusRunEventStore(kafka_bootstrap, bus_db, topic=topic, keyring=KEYRING, poll_interval_s=0.1)
    try:
        async with running(
            Projector(kafka_bootstrap, bus_db, topic=topic, partitions=range(4), keyring=KEYRING)
        ):
            yield store
    finally:
        await store.close()


async def test_sealed_records_hold_no_plaintext_and_read_back_whole(
    sealing: BusRunEventStore, kafka_bootstrap: str, bus_db: str, topic: str
) -> None:
    marker = f"secret-{uuid.uuid4().hex}"
    written = await sealing.put_batch([_message("t1", marker), _message("t2", marker, user_id="u1")])
    (read,) = await sealing.list_messages("t1")
    assert read == written[0]
    assert read["content"]["content"] == marker
    assert read["metadata"] == {"note": marker}
    records = await raw_records(kafka_bootstrap, topic)
    assert len(records) == 2
    connection = await asyncpg.connect(libpq_dsn(bus_db))
    try:
        keys = dict(await connection.fetch("SELECT thread_id, key_id FROM public.thread_keys"))
    finally:
        await connection.close()
    for record in records:
        assert marker.encode() not in record.value
        thread_id = record.key.decode()
        assert dict(record.headers)[SEALED_HEADER] == keys[thread_id].encode()
        # The ids, type and category stay clear: partitioning, dedupe and filters work on them.
        assert thread_id.encode() in record.value
        assert b'"event_type":"ai_message"' in record.value


async def test_an_erased_thread_cannot_be_read_from_the_topic_any_more(
    kafka_bootstrap: str, bus_db: str, topic: str, tmp_path: Path
) -> None:
    blobs = FileBlobStore(tmp_path / "blobs", fsync=False)
    store = BusRunEventStore(
        kafka_bootstrap, bus_db, topic=topic, keyring=KEYRING, blobs=blobs, max_trace_content=100
    )
    erased, kept = f"erased-{uuid.uuid4().hex}", f"kept-{uuid.uuid4().hex}"
    trace = {"run_id": "r1", "event_type": "tool.result", "category": "trace"}
    try:
        async with running(
            Projector(kafka_bootstrap, bus_db, topic=topic, partitions=range(4), keyring=KEYRING)
        ):
            await store.put_batch(
                [_message("gone", erased), {**trace, "thread_id": "gone", "content": erased * 20}]
            )
            (kept_trace,) = await store.put_batch([{**trace, "thread_id": "stays", "content": kept * 20}])
            assert await store.delete_by_thread("gone", erase=True) == 2
            assert await store.list_events("gone", "r1") == []
            assert await store.get_full_content("stays", kept_trace["event_id"]) == kept * 20
        # No blob holds either in the clear: they are sealed with their threads' keys.
        for path in (tmp_path / "blobs").rglob("*"):
            if path.is_file():
                assert erased.encode() not in path.read_bytes()
                assert kept.encode() not in path.read_bytes()
        assert len(await raw_records(kafka_bootstrap, topic)) == 4  # the log keeps the records, sealed
    finally:
        await store.close()


async def test_a_bus_store_that_does_not_seal_refuses_to_erase_before_deleting(
    bus_store: BusRunEventStore, kafka_bootstrap: str, bus_db: str, topic: str
) -> None:
    async with running(Projector(kafka_bootstrap, bus_db, topic=topic, partitions=range(4))):
        await bus_store.put(**_message("t1", "hello"))
        with pytest.raises(ErasureUnavailableError, match="does not seal its records"):
            await bus_store.delete_by_thread("t1", erase=True)
        assert len(await bus_store.list_messages("t1")) == 1


async def test_a_projector_without_the_keys_stops_and_dead_letters_nothing(
    kafka_bootstrap: str, bus_db: str, topic: str
) -> None:
    store = BusRunEventStore(kafka_bootstrap, bus_db, topic=topic, keyring=KEYRING)
    try:
        await store.publish_batch([_message("t1", "sealed")])
    finally:
        await store.close()
    for keyring, problem in (
        (None, "this consumer has no keyring"),
        (Keyring.of(new_key()), "does not hold"),
    ):
        projector = Projector(kafka_bootstrap, bus_db, topic=topic, partitions=range(4), keyring=keyring)
        try:
            with pytest.raises(KeyUnavailableError, match=problem):
                await asyncio.wait_for(projector.run(), timeout=60)
        finally:
            await projector.close()
    connection = await asyncpg.connect(libpq_dsn(bus_db))
    try:
        assert await connection.fetchval("SELECT count(*) FROM dead_letters") == 0
        assert await connection.fetchval("SELECT count(*) FROM run_events") == 0
        assert await connection.fetchval("SELECT coalesce(sum(next_offset), 0) FROM projection_offsets") == 0
    finally:
        await connection.close()


async def test_a_writer_that_cached_a_destroyed_key_writes_erased_events_until_its_cache_expires(
    kafka_bootstrap: str, bus_db: str, topic: str
) -> None:
    """The rule: a writer keeps a thread's key `key_cache_ttl_s`; what it seals with a key destroyed in
    the meantime is projected as erased (it can never be opened), and its next key is a new one."""
    writer = BusRunEventStore(kafka_bootstrap, bus_db, topic=topic, keyring=KEYRING, key_cache_ttl_s=1.0)
    eraser = BusRunEventStore(kafka_bootstrap, bus_db, topic=topic, keyring=KEYRING)
    try:
        async with running(
            Projector(kafka_bootstrap, bus_db, topic=topic, partitions=range(4), keyring=KEYRING)
        ):
            await writer.put(**_message("t1", "before"))
            await eraser.delete_by_thread("t1", erase=True)
            stale = await writer.put(**_message("t1", "sealed with the destroyed key"))
            (projected,) = await writer.list_events("t1", "r1")
            assert projected["event_id"] == stale["event_id"]
            assert projected["content"] == ""
            assert projected["metadata"] == {"erased": True}
            await asyncio.sleep(1.1)
            fresh = await writer.put(**_message("t1", "after the cache expired"))
            assert (await writer.list_messages("t1"))[-1] == fresh
            assert fresh["content"]["content"] == "after the cache expired"
    finally:
        await writer.close()
        await eraser.close()


async def test_after_a_kek_rotation_the_old_kek_can_go(kafka_bootstrap: str, bus_db: str, topic: str) -> None:
    old, new = new_key(), new_key()
    before = Keyring.of(old)
    store = BusRunEventStore(kafka_bootstrap, bus_db, topic=topic, keyring=before)
    try:
        await store.publish_batch([_message(f"t{n}", "sealed under the old KEK") for n in range(5)])
    finally:
        await store.close()
    engine = engine_for(bus_db)
    try:
        rotated = await ThreadKeys(engine, Keyring.of(new, old)).rewrap(batch=2)
        assert rotated == 5
        assert await ThreadKeys(engine, Keyring.of(new, old)).rewrap() == 0  # done: nothing left
    finally:
        await engine.dispose()
    # Only the new KEK from here on: every record opens.
    only_new = Keyring.of(new)
    reader = BusRunEventStore(kafka_bootstrap, bus_db, topic=topic, keyring=only_new)
    try:
        async with running(
            Projector(kafka_bootstrap, bus_db, topic=topic, partitions=range(4), keyring=only_new)
        ):
            await reader.put(**_message("t0", "after the rotation"))
            contents = [m["content"]["content"] for m in await reader.list_messages("t0")]
            assert contents == ["sealed under the old KEK", "after the rotation"]
    finally:
        await reader.close()
