"""The sql backend when the database fails: all-or-nothing batches, group commit's per-caller outcomes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg
import pytest

from runevents.errors import RunEventsError
from runevents.tables import writes
from runevents.tables.failures import WriteFailedError
from runevents.tables.group_commit import CommitOutcomeUnknown, GroupCommitter
from tests.tables.support import (
    Record,
    fetch_all,
    insert_counter,
    make_event,
    pg_connection,
    sql_store,
    thread_state,
)

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
    original: Callable[[Any, int], tuple[Any, ...]] = writes.event_row
    kind = writes.ROW_COLUMNS.index("content_kind")

    def poisoned(event: Any, seq: int) -> tuple[Any, ...]:
        row = original(event, seq)
        if event.run_id == "poison":
            row = (*row[:kind], "bad", *row[kind + 1 :])
        return row

    monkeypatch.setattr(writes, "event_row", poisoned)


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
        inserts = insert_counter(monkeypatch)
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


async def test_two_hundred_concurrent_puts_share_a_few_transactions(migrated_pg, monkeypatch):
    async with sql_store(migrated_pg) as store:
        assert await store.count_messages("t1") == 0  # the schema check, before counting statements
        inserts = insert_counter(monkeypatch)
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
