"""The sql backend under many writers: several processes, the schema check, truncation, counters."""

from __future__ import annotations

import asyncio
import itertools
import json
import multiprocessing
import random
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from runevents.errors import SchemaOutdatedError
from runevents.events import DEFAULT_MAX_TRACE_CONTENT, prepare_event
from runevents.store import open_store
from runevents.tables.migrate import upgrade_async
from runevents.tables.sql import SqlRunEventStore
from runevents.tables.writes import ROW_COLUMNS, event_row
from tests.tables.support import (
    BATCH_SIZE,
    BATCHES_PER_WRITER,
    COROUTINES,
    PROCESSES,
    PUTS_PER_WRITER,
    SHARED_THREADS,
    fetch_all,
    make_event,
    pg_connection,
    sql_store,
    thread_state,
)

# ---------------------------------------------------------------------------------------------------
# 1. Several processes at once on one PostgreSQL


def _writer_process(url: str, process_index: int, barrier: Any, out_path: str) -> None:
    """One OS process: a store, then COROUTINES writers started together with the other processes."""
    results = asyncio.run(_process_writes(url, process_index, barrier))
    Path(out_path).write_text(json.dumps(results))


async def _process_writes(url: str, process_index: int, barrier: Any) -> list[dict[str, Any]]:
    store = SqlRunEventStore(url)
    try:
        await store.count_messages(SHARED_THREADS[0])  # the schema check and a first connection
        await asyncio.to_thread(barrier.wait, 60)
        writers = [_one_writer(store, process_index, w) for w in range(COROUTINES)]
        return [
            {"writer": f"{process_index}.{w}", "calls": calls}
            for w, calls in enumerate(await asyncio.gather(*writers))
        ]
    finally:
        await store.close()


async def _one_writer(store: SqlRunEventStore, process_index: int, writer: int) -> list[list[list[Any]]]:
    """25 puts and 3 batches to random shared threads; per call, [thread_id, seq, event_id] per record."""
    rng = random.Random(process_index * 1000 + writer)
    calls: list[list[list[Any]]] = []
    run_id = f"p{process_index}-w{writer}"
    for i in range(PUTS_PER_WRITER):
        category = "message" if rng.random() < 0.6 else "trace"
        record = await store.put(**make_event(rng.choice(SHARED_THREADS), run_id, i, category=category))
        calls.append([[record["thread_id"], record["seq"], record["event_id"]]])
        if i % 8 == 7:  # after puts 8, 16 and 24
            # Batches span several threads: their counter rows are locked together, in one order.
            batch = [
                make_event(
                    rng.choice(SHARED_THREADS),
                    run_id,
                    1000 * i + k,
                    category=rng.choice(["message", "trace"]),
                )
                for k in range(BATCH_SIZE)
            ]
            records = await store.put_batch(batch)
            assert [r["thread_id"] for r in records] == [e["thread_id"] for e in batch]
            calls.append([[r["thread_id"], r["seq"], r["event_id"]] for r in records])
    return calls


async def test_four_processes_of_eight_writers_keep_every_thread_gap_free(migrated_pg, tmp_path):
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    outputs = [tmp_path / f"process-{p}.json" for p in range(PROCESSES)]
    processes = [
        context.Process(target=_writer_process, args=(migrated_pg, p, barrier, str(outputs[p])))
        for p in range(PROCESSES)
    ]
    started = time.monotonic()
    for process in processes:
        process.start()
    try:
        for process in processes:
            await asyncio.to_thread(process.join, 60)
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()
    assert [p.exitcode for p in processes] == [0] * PROCESSES, "a writer process failed (see stderr)"
    assert time.monotonic() - started < 20

    returned: dict[tuple[str, int], str] = {}  # (thread_id, seq) -> event_id, as the writers got them
    process_of: dict[tuple[str, int], int] = {}
    for process_index, path in enumerate(outputs):
        for writer in json.loads(path.read_text()):
            last_seen: dict[str, int] = {}
            for call in writer["calls"]:
                for thread_id, seq, event_id in call:
                    assert (thread_id, seq) not in returned, f"seq {seq} of {thread_id} returned twice"
                    returned[thread_id, seq] = event_id
                    process_of[thread_id, seq] = process_index
                    # One writer's calls follow each other: its seqs of one thread only go up.
                    assert seq > last_seen.get(thread_id, 0), (writer["writer"], thread_id)
                    last_seen[thread_id] = seq
    per_writer = PUTS_PER_WRITER + BATCHES_PER_WRITER * BATCH_SIZE
    assert len(returned) == PROCESSES * COROUTINES * per_writer
    # The processes really wrote the same threads at the same time: their seqs interleave.
    ordered = sorted(process_of)
    handovers = sum(
        1
        for before, after in itertools.pairwise(ordered)
        if before[0] == after[0] and process_of[before] != process_of[after]
    )
    assert handovers > len(SHARED_THREADS) * PROCESSES, handovers

    async with sql_store(migrated_pg) as store:
        state = await thread_state(store)
        assert sorted(state) == SHARED_THREADS
        for thread_id, found in state.items():
            n = len(found["seqs"])
            assert found["seqs"] == list(range(1, n + 1)), thread_id
            assert found["counter"] == (n, n, found["messages"]), thread_id
            assert await store.count_messages(thread_id) == found["messages"]
        stored = {
            (thread_id, seq): str(event_id)
            for thread_id, seq, event_id in await fetch_all(
                store, "SELECT thread_id, seq, event_id FROM run_events"
            )
        }
    # Every record a writer got back is the row stored under that seq, and nothing else is stored.
    assert stored == returned


# ---------------------------------------------------------------------------------------------------
# 2. The schema check, and a named PostgreSQL schema


async def test_the_store_refuses_an_unmigrated_database_until_it_is_upgraded(database_url):
    async with sql_store(database_url) as writer, sql_store(database_url) as reader:
        with pytest.raises(SchemaOutdatedError, match="runevents db upgrade") as on_put:
            await writer.put(**make_event())
        with pytest.raises(SchemaOutdatedError, match="runevents db upgrade") as on_read:
            await reader.list_messages("t1")
        assert "at revision none" in str(on_put.value)
        assert "at revision none" in str(on_read.value)
        # The refusal came before anything was written: the database is still empty.
        tables = await fetch_all(
            writer,
            "SELECT name FROM sqlite_master WHERE type = 'table'"
            if writer.engine.dialect.name == "sqlite"
            else "SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
        )
        assert tables == []

        await upgrade_async(database_url)
        # The same store objects work now: a refusal is not remembered.
        record = await writer.put(**make_event())
        assert record["seq"] == 1
        assert [r["event_id"] for r in await reader.list_messages("t1")] == [record["event_id"]]


async def test_a_named_postgresql_schema_holds_everything_and_public_nothing(pg_database):
    await upgrade_async(pg_database, schema="tenant_a")
    async with sql_store(pg_database, schema="tenant_a") as store:
        records = await store.put_batch([make_event("t1", "r1", n) for n in range(3)])
        records += await store.put_batch([make_event("t1", "r2", 3, category="trace")])
        receipt, created = await store.put_if_absent(**make_event("t1", "r2", 4, event_type="run.end"))
        assert created
        assert [r["seq"] for r in records] + [receipt["seq"]] == [1, 2, 3, 4, 5]
        assert [r["seq"] for r in await store.list_messages("t1")] == [1, 2, 3, 5]
        assert [r["seq"] for r in await store.list_events("t1", "r2")] == [4, 5]
        assert await store.get_message_seqs("t1", ["m-t1-r1-1"]) == {"m-t1-r1-1": 2}
        assert await store.count_messages("t1") == 4
        assert await store.delete_by_run("t1", "r2") == 2
        assert (await store.put(**make_event("t1", "r3", 6)))["seq"] == 6

    async with pg_connection(pg_database) as connection:
        public = await connection.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
        assert public == []
        tenant = await connection.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'tenant_a'"
        )
        assert {row["table_name"] for row in tenant} == {
            "run_events",
            "thread_counters",
            "projection_offsets",
            "op_results",
            "deleted_events",
            "dead_letters",
            "token_usage_calls",
            "token_usage_offsets",
            "retention_policies",
            "blobs",
            "thread_keys",
            "alembic_version",
        }
        seqs = await connection.fetch("SELECT seq FROM tenant_a.run_events ORDER BY seq")
        assert [row["seq"] for row in seqs] == [1, 2, 3, 6]
        counter = await connection.fetchrow("SELECT * FROM tenant_a.thread_counters")
        assert tuple(counter.values()) == ("t1", 6, 4, 4)

    # The default schema was never migrated: a store on it refuses, and says which schema it looked at.
    async with sql_store(pg_database) as unscoped:
        with pytest.raises(SchemaOutdatedError, match=r"schema public\).*runevents db upgrade"):
            await unscoped.count_messages("t1")


async def test_a_store_on_a_schema_that_was_not_migrated_names_it_in_the_command(migrated_pg):
    async with sql_store(migrated_pg, schema="tenant_b") as store:
        with pytest.raises(SchemaOutdatedError, match="runevents db upgrade URL --schema tenant_b"):
            await store.put(**make_event())


# ---------------------------------------------------------------------------------------------------
# 3. Trace truncation: on by default for the sql backend


async def test_trace_content_is_cut_at_10240_bytes_by_default(migrated_url):
    assert DEFAULT_MAX_TRACE_CONTENT == 10240
    long_text = "a" + "é" * 6000  # 12,001 UTF-8 bytes; byte 10,240 falls inside an "é"
    exact = "b" * 10240
    blob = {"blob": "x" * 20000}
    async with sql_store(migrated_url) as store:
        cut, whole, dict_cut, message = await store.put_batch(
            [
                make_event("t1", "r1", category="trace", content=long_text),
                make_event("t1", "r1", category="trace", content=exact),
                make_event("t1", "r1", category="trace", content=blob, metadata={"k": 1}),
                make_event("t1", "r1", content=long_text),
            ]
        )
        stored = await store.list_events("t1", "r1")
    assert stored == [cut, whole, dict_cut, message]

    assert cut["content"] == long_text[:5120]  # 10,239 bytes: never half a character
    assert len(cut["content"].encode()) == 10239
    assert cut["metadata"] == {"content_truncated": True, "original_byte_length": 12001}

    assert whole["content"] == exact
    assert whole["metadata"] == {}

    # A dict is serialized first; what is kept is the first 10,240 bytes of its JSON, as a str.
    encoded = json.dumps(blob, separators=(",", ":"))
    assert dict_cut["content"] == encoded[:10240]
    assert dict_cut["metadata"] == {"k": 1, "content_truncated": True, "original_byte_length": len(encoded)}

    assert message["content"] == long_text  # only traces are cut
    assert message["metadata"] == {}


async def test_open_store_truncates_by_default_too(migrated_url):
    store = open_store(migrated_url)
    try:
        record = await store.put(**make_event(category="trace", content="z" * 20000))
    finally:
        await store.close()
    assert record["content"] == "z" * 10240
    assert record["metadata"]["original_byte_length"] == 20000


async def test_max_trace_content_none_keeps_trace_content_whole(migrated_url):
    content = "é" * 20000
    async with sql_store(migrated_url, max_trace_content=None) as store:
        record = await store.put(**make_event(category="trace", content=content))
        (stored,) = await store.list_events("t1", "r1")
    assert record["content"] == stored["content"] == content
    assert record["metadata"] == stored["metadata"] == {}


# ---------------------------------------------------------------------------------------------------
# 6. count_messages reads the counter row, and the counters match the rows


async def test_counters_equal_the_rows_after_writes_and_deletes(migrated_url):
    async with sql_store(migrated_url) as store:
        await store.put_batch(
            [
                make_event("t1", run, n, category=("message", "trace")[n % 3 == 0])
                for n in range(12)
                for run in ("r1", "r2")
            ]
        )
        await store.put_batch([make_event("t2", "r1", n, user_id="u1") for n in range(5)])
        await store.put_batch([make_event("t3", "r1", n, category="trace") for n in range(4)])
        assert await store.delete_by_run("t1", "r1") == 12
        await store.put_batch([make_event("t1", "r3", n, user_id="u1") for n in range(3)])
        await store.put_if_absent(**make_event("t1", "r3", 100, event_type="run.end", category="lifecycle"))
        await store.put_if_absent(**make_event("t1", "r3", 101, event_type="run.end", category="lifecycle"))
        await store.put(**make_event("t1", "r3", 102, category="trace"))
        assert await store.delete_by_thread("t2") == 5
        await store.put_batch([make_event("t2", "r9", n) for n in range(2)])
        assert await store.delete_by_run("t3", "missing") == 0

        state = await thread_state(store)
        assert sorted(state) == ["t1", "t2", "t3"]
        for thread_id, found in state.items():
            events = len(found["seqs"])
            last_seq, event_count, message_count = found["counter"]
            assert (event_count, message_count) == (events, found["messages"]), thread_id
            assert last_seq == found["seqs"][-1]
        assert state["t1"]["seqs"][-1] == 24 + 3 + 1 + 1  # seqs go on after delete_by_run
        assert state["t2"]["seqs"] == [1, 2]  # and start again after delete_by_thread

        statements: list[str] = []
        event.listen(
            store.engine.sync_engine,
            "before_cursor_execute",
            lambda conn, cursor, statement, *rest: statements.append(statement),
        )
        for thread_id in [*state, "never-written"]:
            statements.clear()
            expected = state[thread_id]["messages"] if thread_id in state else 0
            assert await store.count_messages(thread_id) == expected
            # One read of the counter row; never a count over run_events.
            assert len(statements) == 1, statements
            assert "FROM thread_counters" in statements[0]
            assert "run_events" not in statements[0]
        assert await store.count_messages("t1", user_id="u1") == 3
        assert await store.count_messages("never-written", user_id="u1") == 0


def test_a_row_holds_each_value_in_its_column():
    prepared = prepare_event(
        make_event("t1", "r1", 3, metadata={"task_id": "task-9", "caller": "lead_agent"}, user_id="u1")
    )
    row = dict(zip(ROW_COLUMNS, event_row(prepared, 7), strict=True))
    assert row == {
        "thread_id": "t1",
        "seq": 7,
        "run_id": "r1",
        "event_id": prepared.event_id,
        "event_type": prepared.event_type,
        "category": prepared.category,
        "content": prepared.content_json.decode(),
        "content_kind": "dict",
        "metadata": prepared.metadata_json.decode(),
        "task_id": "task-9",
        "caller": "lead_agent",
        "created_at": prepared.created,
        "user_id": "u1",
        "message_id": "m-t1-r1-3",
    }
