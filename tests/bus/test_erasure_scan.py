"""Erasure proven by a scan (issue 21): after `runevents erase --user` and a replay of the whole topic, no
plaintext of the erased user's threads is anywhere runevents keeps or shows data: the topic, every table
of every schema (dead letters included), the blob store, the logs. The kept thread's text is found by
the same scan, so the scan can see plaintext where there is some."""

from __future__ import annotations

import asyncio
import base64
import logging
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from typer.testing import CliRunner

from runevents.bus.projector import Projector
from runevents.bus.store import BusRunEventStore
from runevents.cli.app import app
from runevents.crypto.keyring import Keyring, new_key
from runevents.crypto.sealing import decode_sealed, sealed_key
from runevents.events import PreparedEvent, UndecodableRecordError
from runevents.lifecycle.blobs import FileBlobStore
from runevents.ops.replay import replay
from runevents.tables.keys import ThreadKeys
from runevents.tables.sql import engine_for
from runevents.tables.writes import libpq_dsn
from tests.bus.conftest import running
from tests.bus.test_encryption import raw_records

KEK = new_key()
KEYRING = Keyring.of(KEK)


async def scan_tables(url: str) -> str:
    """Every row of every table of every schema of the database, as text."""
    connection = await asyncpg.connect(libpq_dsn(url))
    try:
        tables = await connection.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') AND table_type = 'BASE TABLE'"
        )
        assert len(tables) > 20, tables  # public's tables and the replay's: a scan that sees them
        found = []
        for schema, table in tables:
            rows = await connection.fetch(f'SELECT t::text FROM "{schema}"."{table}" t')
            found += [row[0] for row in rows]
        return "\n".join(found)
    finally:
        await connection.close()


def _events(thread_id: str, user_id: str, marker: str) -> list[dict[str, Any]]:
    base = {"thread_id": thread_id, "run_id": "r1", "user_id": user_id}
    return [
        {**base, "event_type": "human_message", "category": "message",
         "content": {"id": f"h-{thread_id}", "content": f"my address is {marker}"}},
        {**base, "event_type": "ai_message", "category": "message",
         "content": {"id": f"a-{thread_id}", "content": "noted"}, "metadata": {"about": marker}},
        {**base, "event_type": "tool.result", "category": "trace", "content": f"{marker} " * 200},
    ]  # fmt: skip


async def test_after_erasing_a_user_and_replaying_the_topic_no_plaintext_of_theirs_is_left(
    kafka_bootstrap: str,
    bus_db: str,
    topic: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="runevents")
    erased, kept = f"erased-{uuid.uuid4().hex}", f"kept-{uuid.uuid4().hex}"
    blobs = FileBlobStore(tmp_path / "blobs", fsync=False)
    store = BusRunEventStore(
        kafka_bootstrap, bus_db, topic=topic, keyring=KEYRING, blobs=blobs, max_trace_content=200
    )
    projector = Projector(kafka_bootstrap, bus_db, topic=topic, partitions=range(4), keyring=KEYRING)
    try:
        async with running(projector):
            for thread in ("a1", "a2"):
                await store.put_batch(_events(thread, "alice", erased))
            await store.put_batch(_events("b1", "bob", kept))
            await store.put_if_absent(**{**_events("a1", "alice", erased)[0], "run_id": "r2"})
            # A record of alice's thread damaged on the way: dead-lettered, as sealed as it came.
            (damaged,) = await store.publish_batch(_events("a2", "alice", erased)[:1])
            await _publish_damaged_copy(kafka_bootstrap, topic, damaged.partition, damaged.offset)
            await store.put(**_events("a2", "alice", "after")[1])  # waits for the damaged one too
            assert await store.user_thread_ids("alice") == ["a1", "a2"]
            for name, value in (
                ("KAFKA", kafka_bootstrap),
                ("TOPIC", topic),
                ("DATABASE_URL", bus_db),
                ("KEK", base64.b64encode(KEK).decode()),
            ):
                monkeypatch.setenv(f"RUNEVENTS_{name}", value)
            result = await asyncio.to_thread(CliRunner().invoke, app, ["erase", "--user", "alice", "--bus"])
            assert result.exit_code == 0, result.output
            assert "thread 'a1': 4 events deleted, its keys destroyed" in result.output
            assert "thread 'a2': 5 events deleted, its keys destroyed" in result.output
        replayed = await replay(
            kafka_bootstrap, bus_db, projection="replayed", topic=topic, keyring=KEYRING, tick_s=0.1
        )
        assert replayed.caught_up
    finally:
        await store.close()
    tables = await scan_tables(bus_db)
    assert erased not in tables
    assert kept in tables  # bob's thread, in the live tables and the replayed ones
    assert tables.count("h-b1") >= 2
    records = await raw_records(kafka_bootstrap, topic)
    # Everything written is still on the topic, sealed: a1 4 puts, a2 6 (the damaged copy too), b1 3,
    # and the two deletes.
    assert len(records) == 15
    for record in records:
        assert erased.encode() not in record.value
        assert kept.encode() not in record.value  # an analytics consumer without the keys sees neither
        assert all(erased.encode() not in value for _, value in record.headers)
    # With the KEK and the keys table, as a consumer with the key service reads: alice's records open
    # as erased (their keys are destroyed), bob's open whole.
    opened = await _open_all(bus_db, records)
    assert {thread for thread, _ in opened} == {"a1", "a2", "b1"}
    for thread, event in opened:
        if thread == "b1":
            assert kept in orjson.dumps([event.content, event.metadata]).decode()
        else:
            assert (event.content, event.metadata) == ("", {"erased": True})
    for path in (tmp_path / "blobs").rglob("*"):
        if path.is_file():
            assert erased.encode() not in path.read_bytes()
    assert erased not in caplog.text
    dead = await _dead_letter_values(bus_db)
    # The damaged record, dead-lettered by the live projection; the replay, its key destroyed, takes it
    # for an erased one like the rest of the thread (nothing to open, nothing to keep).
    assert len(dead) == 1
    assert all(erased.encode() not in value for value in dead)


async def _publish_damaged_copy(kafka: str, topic: str, partition: int, offset: int) -> None:
    """Publish again the record at `offset` with one byte of its sealed data changed."""
    (original,) = [
        r for r in await raw_records(kafka, topic) if (r.partition, r.offset) == (partition, offset)
    ]
    document = orjson.loads(original.value)
    data = bytearray(base64.b64decode(document["sealed"]["data"]))
    data[0] ^= 0xFF
    document["sealed"]["data"] = base64.b64encode(bytes(data)).decode()
    producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(
            topic, value=orjson.dumps(document), key=original.key, headers=list(original.headers),
            partition=partition,
        )  # fmt: skip
    finally:
        await producer.stop()


async def _open_all(url: str, records: list[Any]) -> list[tuple[str, PreparedEvent]]:
    """Every sealed put of `records` opened with the keys table (whole, or erased), by thread."""
    sealed = [r for r in records if b'"sealed"' in r.value]
    names = {key for r in sealed if (key := sealed_key(r.headers)) is not None}
    engine = engine_for(url)
    try:
        async with engine.connect() as connection:
            ciphers = await ThreadKeys(engine, KEYRING).ciphers(connection, names)
        opened = []
        for record in sealed:
            try:
                decoded = decode_sealed(record.value, ciphers, max_trace_content=None)
            except UndecodableRecordError:
                continue  # the damaged copy
            event = decoded[1] if isinstance(decoded, tuple) else decoded
            opened.append((event.thread_id, event))
        return opened
    finally:
        await engine.dispose()


async def _dead_letter_values(url: str) -> list[bytes]:
    connection = await asyncpg.connect(libpq_dsn(url))
    try:
        rows = await connection.fetch(
            "SELECT value FROM public.dead_letters UNION ALL SELECT value FROM replayed.dead_letters"
        )
        return [bytes(row[0]) for row in rows]
    finally:
        await connection.close()
