"""What only the sql backend promises: many processes on one PostgreSQL, the schema check, trace
truncation by default, all-or-nothing batches when the database fails, group commit, counter reads.

The conformance suite already runs on sql+sqlite and sql+postgresql; these tests look under the store,
at the rows and counters in the database, and at the statements it sends.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import multiprocessing
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import make_url

from runevents.errors import RunEventsError, SchemaOutdatedError
from runevents.events import DEFAULT_MAX_TRACE_CONTENT
from runevents.store import open_store, sql
from runevents.store.group_commit import CommitOutcomeUnknown, GroupCommitter
from runevents.store.migrate import upgrade_async
from runevents.store.sql import SqlRunEventStore, WriteFailedError

Record = dict[str, Any]

PROCESSES = 4
COROUTINES = 8
SHARED_THREADS = [f"shared-{i:02d}" for i in range(20)]
PUTS_PER_WRITER = 25
BATCHES_PER_WRITER = 3
BATCH_SIZE = 4


def make_event(
    thread_id: str = "t1",
    run_id: str = "r1",
    n: int = 0,
    *,
    category: str = "message",
    **extra: Any,
) -> dict[str, Any]:
    """A message (with a message id) or a trace event with distinct content."""
    if category == "message":
        content: Any = {"id": f"m-{thread_id}-{run_id}-{n}", "type": "ai", "content": f"hello {n}"}
        event_type = "llm.ai.response"
    else:
        content = f"trace {thread_id} {run_id} {n}"
        event_type = "llm.start"
    return {
        "thread_id": thread_id,
        "run_id": run_id,
        "event_type": event_type,
        "category": category,
        "content": content,
        **extra,
    }


def libpq_dsn(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL as the plain postgresql:// DSN asyncpg.connect takes."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@asynccontextmanager
async def pg_connection(url: str) -> AsyncIterator[asyncpg.Connection]:
    """A raw asyncpg connection beside the store's pool, closed on the way out."""
    connection = await asyncpg.connect(libpq_dsn(url))
    try:
        yield connection
    finally:
        await connection.close()


@asynccontextmanager
async def sql_store(url: str, **options: Any) -> AsyncIterator[SqlRunEventStore]:
    """A sql store, closed on the way out."""
    store = SqlRunEventStore(url, **options)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty, unmigrated database: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'events.db'}"
    return str(request.getfixturevalue("pg_database"))


@pytest.fixture
async def migrated_url(database_url: str) -> str:
    """`database_url` upgraded to the newest revision."""
    await upgrade_async(database_url)
    return database_url


@pytest.fixture
async def migrated_pg(pg_database: str) -> str:
    """A fresh PostgreSQL database upgraded to the newest revision."""
    await upgrade_async(pg_database)
    return pg_database


async def fetch_all(store: SqlRunEventStore, query: str, **params: Any) -> list[Any]:
    """Rows of a raw query through the store's own engine (works on both dialects)."""
    async with store.engine.connect() as connection:
        return list((await connection.execute(text(query), params)).all())


async def thread_state(store: SqlRunEventStore) -> dict[str, dict[str, Any]]:
    """Per thread: the seqs of its rows, its message rows, and its counter row (None if it has none)."""
    state: dict[str, dict[str, Any]] = defaultdict(lambda: {"seqs": [], "messages": 0, "counter": None})
    for thread_id, seq, category in await fetch_all(
        store, "SELECT thread_id, seq, category FROM run_events ORDER BY thread_id, seq"
    ):
        state[thread_id]["seqs"].append(seq)
        state[thread_id]["messages"] += category == "message"
    for thread_id, last_seq, event_count, message_count in await fetch_all(
        store, "SELECT thread_id, last_seq, event_count, message_count FROM thread_counters"
    ):
        state[thread_id]["counter"] = (last_seq, event_count, message_count)
    return dict(state)


def insert_counter(store: SqlRunEventStore) -> list[int]:
    """Count the writes of rows into run_events (COPYs on PostgreSQL): one entry a write, its row count."""
    inserts: list[int] = []
    copy_rows = store._copy_rows

    async def counting(connection: Any, rows: list[dict[str, Any]]) -> None:
        inserts.append(len(rows))
        await copy_rows(connection, rows)

    store._copy_rows = counting  # type: ignore[method-assign]
    return inserts


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
        assert {row["table_name"] for row in tenant} == {"run_events", "thread_counters", "alembic_version"}
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
# 4. A database error mid-batch rolls the whole batch back


async def _wait_for_backend(
    connection: asyncpg.Connection, query_prefix: str, *, within_s: float = 10
) -> int:
    """The pid of the other backend of this database running `query_prefix...` and waiting on a lock."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        pid = await connection.fetchval(
            """
            SELECT pid FROM pg_stat_activity
            WHERE datname = current_database() AND pid <> pg_backend_pid()
              AND state = 'active' AND wait_event_type = 'Lock' AND query ILIKE $1
            """,
            query_prefix + "%",
        )
        if pid is not None:
            return int(pid)
        await asyncio.sleep(0.005)
    raise AssertionError(f"no backend ran {query_prefix!r} and waited within {within_s}s")


async def test_a_connection_killed_mid_batch_rolls_the_whole_batch_back(migrated_pg):
    threads = [f"t{i:02d}" for i in range(50)]
    # The last thread's events come last: the INSERT has written 19,600 rows when it reaches them.
    batch = [
        make_event(threads[i % 49], "big", i, category=("message", "trace")[i % 2]) for i in range(19_600)
    ]
    batch += [make_event(threads[49], "big", 19_600 + i) for i in range(400)]

    async with (
        sql_store(migrated_pg) as store,
        pg_connection(migrated_pg) as killer,
        pg_connection(migrated_pg) as blocker,
    ):
        before = await store.put_batch([make_event("t00", "early", n) for n in range(3)])
        assert [r["seq"] for r in before] == [1, 2, 3]

        # An uncommitted row at (t49, 1) holds the batch's INSERT at its first t49 row, mid-batch,
        # so the kill below lands while the INSERT runs, every time.
        hold = blocker.transaction()
        await hold.start()
        await blocker.execute(
            """
            INSERT INTO run_events (thread_id, seq, run_id, event_id, event_type, category, content,
                                    content_kind, metadata, created_at)
            VALUES ('t49', 1, 'blocker', gen_random_uuid(), 'x', 'trace', '', 'str', '{}', now())
            """
        )
        writing = asyncio.create_task(store.put_batch(batch))
        try:
            pid = await _wait_for_backend(killer, "COPY")
            assert await killer.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await hold.rollback()
        with pytest.raises(RunEventsError) as caught:
            await writing

        # The INSERT had written rows of the batch when its connection died (tuples of the aborted
        # transaction count as inserted once the dead backend reports its statistics).
        inserted = 0
        deadline = time.monotonic() + 10
        while inserted < 19_600 and time.monotonic() < deadline:
            await killer.execute("SELECT pg_stat_clear_snapshot()")
            inserted = await killer.fetchval(
                "SELECT n_tup_ins FROM pg_stat_user_tables WHERE relname = 'run_events'"
            )
            await asyncio.sleep(0.05)
        assert inserted >= 19_600

        # Killed before its commit, so the outcome is known: written nothing, and the error says so.
        error = caught.value
        assert isinstance(error, WriteFailedError), repr(error)
        message = str(error)
        assert "20000 events" in message
        assert "rolled back" in message
        assert "nothing was stored" in message
        assert "terminat" in message.lower()  # the database's own reason: the connection was terminated

        # Nothing of the batch: no rows, no counters, t00's counter as it was.
        state = await thread_state(store)
        assert state == {"t00": {"seqs": [1, 2, 3], "messages": 3, "counter": (3, 3, 3)}}

        # The store goes on: the next write of t00 follows its last seq, t49 starts at 1.
        after = await store.put_batch([make_event("t00", "late", 9), make_event("t49", "late", 9)])
        assert [(r["thread_id"], r["seq"]) for r in after] == [("t00", 4), ("t49", 1)]
        assert [r["seq"] for r in await store.list_messages("t00")] == [1, 2, 3, 4]


def _poison_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the rows of events of run "poison" break the content_kind CHECK at the database."""
    original: Callable[[Any, int], dict[str, Any]] = sql._row

    def poisoned(event: Any, seq: int) -> dict[str, Any]:
        row = original(event, seq)
        if event.run_id == "poison":
            row["content_kind"] = "bad"
        return row

    monkeypatch.setattr(sql, "_row", poisoned)


@pytest.mark.parametrize("call", ["put", "put_batch"])
async def test_one_failing_write_of_a_group_commit_fails_alone(migrated_pg, monkeypatch, call):
    _poison_rows(monkeypatch)

    def batch(i: int) -> list[dict[str, Any]]:
        run_id = "poison" if i == 4 else f"r{i}"
        if call == "put":
            return [make_event("t1", run_id, i)]
        # Several events of two threads; in batch 4 only the middle one is poisoned.
        return [
            make_event("t1", f"r{i}", 10 * i),
            make_event("t2", run_id, 10 * i + 1),
            make_event("t1", f"r{i}", 10 * i + 2, category="trace"),
        ]

    async def write(events: list[dict[str, Any]]) -> list[Record]:
        if call == "put":
            return [await store.put(**events[0])]
        return await store.put_batch(events)

    async with sql_store(migrated_pg) as store:
        await store.put(**make_event("t1", "warm-up", 0))  # schema checked, flushers running
        inserts = insert_counter(store)
        batches = [batch(i) for i in range(10)]
        results = await asyncio.gather(*(write(events) for events in batches), return_exceptions=True)

        # The ten writes shared one transaction first; it failed, and each was tried alone.
        size = sum(len(events) for events in batches)
        assert inserts[0] == size
        assert sorted(inserts[1:]) == sorted(len(events) for events in batches)

        error = results[4]
        assert isinstance(error, WriteFailedError), repr(error)
        assert f"writing {len(batches[4])} events failed and was rolled back" in str(error)
        assert "ck_run_events_content_kind" in str(error)  # what failed, in the database's words

        good = [records for i, records in enumerate(results) if i != 4 and isinstance(records, list)]
        assert len(good) == 9, results
        for events, records in zip(batches[:4] + batches[5:], good, strict=True):
            assert [(r["thread_id"], r["content"]) for r in records] == [
                (e["thread_id"], e["content"]) for e in events
            ]
        got = sorted((r["thread_id"], r["seq"]) for records in good for r in records)
        assert len(set(got)) == len(got)

        # Nothing of the failed write is stored, and the threads stay gap-free (its counter
        # reservation was rolled back with it).
        state = await thread_state(store)
        stored_runs = {
            run_id for (run_id,) in await fetch_all(store, "SELECT DISTINCT run_id FROM run_events")
        }
        assert "poison" not in stored_runs
        if call == "put_batch":
            assert "r4" not in stored_runs  # the good events of the poisoned batch went with it
        for thread_id, found in state.items():
            n = len(found["seqs"])
            assert found["seqs"] == list(range(1, n + 1)), thread_id
            assert found["counter"] == (n, n, found["messages"])
        assert sorted((t, s) for t, found in state.items() for s in found["seqs"]) == sorted(
            [*got, ("t1", 1)]
        )
        # The next write follows on.
        assert (await store.put(**make_event("t1", "later", 99)))["seq"] == len(state["t1"]["seqs"]) + 1


# ---------------------------------------------------------------------------------------------------
# 5. Group commit coalesces; a cancelled write still waiting is not written


async def test_two_hundred_concurrent_puts_share_a_few_transactions(migrated_pg):
    async with sql_store(migrated_pg) as store:
        assert await store.count_messages("t1") == 0  # the schema check, before counting statements
        inserts = insert_counter(store)
        records = await asyncio.gather(*(store.put(**make_event("t1", "r1", i)) for i in range(200)))

    assert len(inserts) < 100, inserts
    assert sum(inserts) == 200
    assert [r["content"]["content"] for r in records] == [f"hello {i}" for i in range(200)]
    assert sorted(r["seq"] for r in records) == list(range(1, 201))
    assert len({r["event_id"] for r in records}) == 200


async def test_a_cancelled_put_that_was_still_waiting_is_not_written(migrated_pg):
    async with (
        sql_store(migrated_pg, write_concurrency=1) as store,
        pg_connection(migrated_pg) as locker,
        pg_connection(migrated_pg) as watcher,
    ):
        await store.put(**make_event("t1", "r1", 0))
        # Hold t1's counter row: the store's one flusher stalls inside its transaction on put A.
        hold = locker.transaction()
        await hold.start()
        await locker.execute("SELECT 1 FROM thread_counters WHERE thread_id = 't1' FOR UPDATE")
        try:
            put_a = asyncio.create_task(store.put(**make_event("t1", "r1", 1, content="A")))
            await _wait_for_backend(watcher, "INSERT INTO thread_counters")
            put_b = asyncio.create_task(store.put(**make_event("t1", "r1", 2, content="B")))
            await asyncio.sleep(0.1)  # B is queued behind A's transaction
            assert not put_b.done()
            put_b.cancel()
            with pytest.raises(asyncio.CancelledError):
                await put_b
        finally:
            await hold.rollback()
        assert (await put_a)["seq"] == 2
        assert (await store.put(**make_event("t1", "r1", 3, content="C")))["seq"] == 3
        contents = [r["content"] for r in await store.list_messages("t1")]
        assert contents[1:] == ["A", "C"]
        assert (await thread_state(store))["t1"]["counter"] == (3, 3, 3)


async def test_group_committer_skips_a_cancelled_waiter_and_settles_a_cancelled_flushing_one():
    flushed: list[list[Sequence[str]]] = []
    flushing = asyncio.Event()
    release = asyncio.Event()

    async def slow_flush(groups: list[Sequence[str]]) -> list[list[str]]:
        flushed.append(groups)
        flushing.set()
        await release.wait()
        return [[item.upper() for item in group] for group in groups]

    committer: GroupCommitter[str, str] = GroupCommitter(slow_flush, concurrency=1)
    first = asyncio.create_task(committer.submit(["a"]))
    await flushing.wait()  # "a" is in the (slow) transaction
    waiting = asyncio.create_task(committer.submit(["b"]))
    after = asyncio.create_task(committer.submit(["c", "d"]))
    await asyncio.sleep(0.01)
    waiting.cancel()
    first.cancel()
    # Still waiting: the cancel takes effect at once.
    with pytest.raises(asyncio.CancelledError):
        await waiting
    # Already in a transaction: the cancel is passed on only once that transaction has settled.
    await asyncio.sleep(0.01)
    assert not first.done()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await after == ["C", "D"]
    assert flushed == [[["a"]], [["c", "d"]]]  # "b" never reached a flush

    # The flusher survived the cancellations: later writes go through.
    assert await committer.submit(["e"]) == ["E"]
    await committer.close()


async def test_group_committer_gives_every_caller_of_a_failed_commit_its_outcome_unknown_error():
    calls: list[int] = []
    flushing = asyncio.Event()
    release = asyncio.Event()

    async def failing_commit(groups: list[Sequence[int]]) -> list[list[int]]:
        calls.append(len(groups))
        flushing.set()
        await release.wait()
        raise CommitOutcomeUnknown("the commit failed; they may or may not be stored")

    committer: GroupCommitter[int, int] = GroupCommitter(failing_commit, concurrency=1)
    blocking = asyncio.create_task(committer.submit([0]))
    await flushing.wait()
    together = [asyncio.create_task(committer.submit([i])) for i in range(1, 4)]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(blocking, *together, return_exceptions=True)
    assert all(isinstance(result, CommitOutcomeUnknown) for result in results)
    # An unknown outcome is not retried (that could write twice): one flush for the group of three.
    assert calls == [1, 3]
    await committer.close()


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
