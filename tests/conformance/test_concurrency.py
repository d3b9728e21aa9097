"""Concurrent writers of one store (guarantees 2, 8 and 10): seq stays gap-free, receipts stay unique."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import pytest

from runevents.store import RunEventStore
from tests.backends.registry import Backend
from tests.conformance.builders import (
    Record,
    event,
    message,
    opened,
    run_records,
    seqs,
    thread_records,
    trace,
)


async def test_a_thousand_concurrent_puts_get_seqs_one_to_a_thousand(store: RunEventStore) -> None:
    results = await asyncio.gather(*(store.put(**message(content=f"m{i}")) for i in range(1000)))
    assert [r["content"] for r in results] == [f"m{i}" for i in range(1000)]
    assert sorted(seqs(results)) == list(range(1, 1001))
    assert len({r["event_id"] for r in results}) == 1000
    stored = await store.list_messages("t1", limit=1000)
    assert seqs(stored) == list(range(1, 1001))
    assert sorted(stored, key=lambda r: r["content"]) == sorted(results, key=lambda r: r["content"])
    assert await store.count_messages("t1") == 1000
    assert (await store.put(**message()))["seq"] == 1001


async def test_concurrent_batches_across_threads_keep_every_thread_gap_free(store: RunEventStore) -> None:
    batches = []
    for i in range(200):
        # Three events of one thread, then two of others: batches overlap in every thread.
        batch = [message(f"t{i % 10}", f"r{i % 3}", content=f"{i}.{k}") for k in range(3)]
        batch += [trace(f"t{(i * 7 + k) % 10}", "r0", content=f"{i}.{k}") for k in (3, 4)]
        batches.append(batch)
    results = await asyncio.gather(*(store.put_batch(batch) for batch in batches))
    by_thread: dict[str, list[Record]] = defaultdict(list)
    for batch, records in zip(batches, results, strict=True):
        assert [(r["thread_id"], r["content"]) for r in records] == [
            (e["thread_id"], e["content"]) for e in batch
        ]
        # Within a batch, a thread's events take ascending seqs in input order.
        first_three = seqs(records[:3])
        assert first_three == sorted(first_three)
        assert len(set(first_three)) == 3
        for record in records:
            by_thread[record["thread_id"]].append(record)
    assert sum(len(records) for records in by_thread.values()) == 1000
    for thread_id, records in by_thread.items():
        assert sorted(seqs(records)) == list(range(1, len(records) + 1)), thread_id
        stored = await thread_records(store, thread_id, ["r0", "r1", "r2"])
        assert stored == sorted(records, key=lambda r: r["seq"])
    assert len({r["event_id"] for records in results for r in records}) == 1000


async def test_concurrent_put_if_absent_creates_exactly_one(store: RunEventStore) -> None:
    receipt = event(event_type="run.end", category="lifecycle")
    outcomes = await asyncio.gather(
        *(store.put_if_absent(**{**receipt, "content": f"c{i}"}) for i in range(50))
    )
    created = [record for record, was_created in outcomes if was_created]
    assert len(created) == 1
    assert all(record == created[0] for record, _ in outcomes)
    assert created[0]["seq"] == 1
    assert await run_records(store, "t1", "r1") == created


async def test_put_if_absent_racing_ordinary_writes_keeps_seq_gap_free(store: RunEventStore) -> None:
    receipt = event(event_type="run.end", category="lifecycle")
    calls: list[Any] = []
    for i in range(50):
        calls.append(store.put_if_absent(**{**receipt, "content": f"c{i}"}))
        calls.append(store.put(**message(content=f"m{i}")))
        calls.append(
            store.put_if_absent(**event(run_id=f"other{i % 5}", event_type="run.end", category="lifecycle"))
        )
    outcomes = await asyncio.gather(*calls)
    receipts = outcomes[0::3]
    assert sum(1 for _, was_created in receipts if was_created) == 1
    assert len({record["event_id"] for record, _ in receipts}) == 1
    others = outcomes[2::3]
    assert sum(1 for _, was_created in others if was_created) == 5
    records = await thread_records(store, "t1", ["r1", *(f"other{i}" for i in range(5))])
    assert seqs(records) == list(range(1, 57))
    assert sorted(r["content"] for r in records if r["category"] == "message") == sorted(
        f"m{i}" for i in range(50)
    )


async def test_deletes_are_serialized_with_concurrent_writers(store: RunEventStore) -> None:
    old = await store.put_batch([message(run_id="old", content=f"o{i}") for i in range(20)])
    calls: list[Any] = [store.put(**message(run_id="new", content=f"n{i}")) for i in range(40)]
    calls.insert(20, store.delete_by_run("t1", "old"))
    outcomes = await asyncio.gather(*calls)
    removed = outcomes.pop(20)
    assert removed == len(old)
    assert seqs(sorted(outcomes, key=lambda r: r["seq"])) == list(range(21, 61))
    assert await run_records(store, "t1", "old") == []
    assert seqs(await run_records(store, "t1", "new")) == list(range(21, 61))
    assert (await store.put(**message()))["seq"] == 61


async def test_delete_by_thread_among_concurrent_writers_is_all_or_nothing_per_put(
    store: RunEventStore,
) -> None:
    await store.put_batch([message(content=f"o{i}") for i in range(10)])
    calls: list[Any] = [store.put(**message(content=f"n{i}")) for i in range(30)]
    calls.insert(15, store.delete_by_thread("t1"))
    outcomes = await asyncio.gather(*calls)
    removed = outcomes.pop(15)
    remaining = await run_records(store, "t1", "r1")
    # Every put landed either before the delete (and was removed with it) or after (and stays).
    assert removed + len(remaining) == 40
    assert removed >= 10
    assert seqs(remaining) == list(range(1, len(remaining) + 1))
    survivors = {r["event_id"] for r in remaining}
    assert survivors <= {r["event_id"] for r in outcomes}
    assert (await store.put(**message()))["seq"] == len(remaining) + 1


# --- cancellation (guarantee 10) -----------------------------------------------------------------


async def cancel_after(work: Any, yields: int, delay: float) -> tuple[bool, Any]:
    """Start `work`, let the loop run `yields` times (and `delay` seconds), cancel it; (finished, result)."""
    task = asyncio.ensure_future(work)
    for _ in range(yields):
        await asyncio.sleep(0)
    if delay:
        await asyncio.sleep(delay)
    task.cancel()
    try:
        return True, await task
    except asyncio.CancelledError:
        return False, None


CANCEL_POINTS = [
    pytest.param(1, 0.0, id="after-1-step"),
    pytest.param(2, 0.0, id="after-2-steps"),
    pytest.param(3, 0.0, id="after-3-steps"),
    pytest.param(5, 0.0, id="after-5-steps"),
    pytest.param(8, 0.0, id="after-8-steps"),
    pytest.param(0, 0.0001, id="after-100us"),
    pytest.param(0, 0.001, id="after-1ms"),
]


@pytest.mark.parametrize(("yields", "delay"), CANCEL_POINTS)
async def test_a_cancelled_put_wrote_its_event_or_did_not(
    backend: Backend, yields: int, delay: float
) -> None:
    # A few rounds, one thread each: the cancel lands at a slightly different moment every time.
    threads = [f"t{round_}" for round_ in range(4)]
    stored: dict[str, list[Record]] = {}
    async with opened(backend) as store:
        for thread_id in threads:
            before = await store.put(**message(thread_id, content="before"))
            put = store.put(**message(thread_id, content="cancelled"))
            finished, result = await cancel_after(put, yields, delay)
            after = [await store.put(**message(thread_id, content=f"after{i}")) for i in range(3)]
            records = await run_records(store, thread_id, "r1")
            contents = [r["content"] for r in records]
            if "cancelled" in contents:
                assert contents == ["before", "cancelled", "after0", "after1", "after2"]
            else:
                assert not finished
                assert contents == ["before", "after0", "after1", "after2"]
            if finished:
                assert result == records[1]
            assert seqs(records) == list(range(1, len(records) + 1))
            assert records[0] == before
            assert records[-3:] == after
            stored[thread_id] = records
    if backend.persistent:
        async with opened(backend) as reopened:
            for thread_id in threads:
                assert await run_records(reopened, thread_id, "r1") == stored[thread_id]
                next_seq = (await reopened.put(**message(thread_id)))["seq"]
                assert next_seq == len(stored[thread_id]) + 1


@pytest.mark.parametrize(("yields", "delay"), CANCEL_POINTS)
async def test_a_cancelled_batch_wrote_all_of_it_or_none(backend: Backend, yields: int, delay: float) -> None:
    batch = [message("ta", content="a1"), trace("tb", content="b1"), message("ta", content="a2")]
    async with opened(backend) as store:
        finished, _ = await cancel_after(store.put_batch(batch), yields, delay)
        a = await run_records(store, "ta", "r1")
        b = await run_records(store, "tb", "r1")
        assert [r["content"] for r in a] in ([], ["a1", "a2"])
        assert [r["content"] for r in b] == (["b1"] if a else [])
        if finished:
            assert a
        next_a = await store.put(**message("ta", content="a3"))
        next_b = await store.put(**message("tb", content="b2"))
        assert (next_a["seq"], next_b["seq"]) == ((3, 2) if a else (1, 1))
        a_after = await run_records(store, "ta", "r1")
        b_after = await run_records(store, "tb", "r1")
    if backend.persistent:
        async with opened(backend) as reopened:
            assert await run_records(reopened, "ta", "r1") == a_after
            assert await run_records(reopened, "tb", "r1") == b_after


@pytest.mark.parametrize(("yields", "delay"), CANCEL_POINTS)
async def test_a_cancelled_put_if_absent_wrote_its_event_or_did_not(
    store: RunEventStore, yields: int, delay: float
) -> None:
    receipt = event(event_type="run.end", category="lifecycle")
    finished, result = await cancel_after(store.put_if_absent(**receipt), yields, delay)
    stored = await run_records(store, "t1", "r1")
    assert len(stored) in (0, 1)
    if finished:
        assert result == (stored[0], True)
    again, created = await store.put_if_absent(**receipt)
    assert created is not bool(stored)
    assert await run_records(store, "t1", "r1") == [again]
    assert again["seq"] == 1


async def test_cancelling_some_of_many_concurrent_puts_leaves_no_hole(backend: Backend) -> None:
    async with opened(backend) as store:
        tasks = [asyncio.ensure_future(store.put(**message(content=f"m{i}"))) for i in range(60)]
        await asyncio.sleep(0)
        for i, task in enumerate(tasks):
            if i % 3 == 0:
                task.cancel()
            if i % 10 == 0:
                await asyncio.sleep(0)
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        finished = {r["content"] for r in outcomes if isinstance(r, dict)}
        for i, outcome in enumerate(outcomes):
            assert isinstance(outcome, dict) or (i % 3 == 0 and isinstance(outcome, asyncio.CancelledError))
        after = [await store.put(**message(content=f"after{i}")) for i in range(5)]
        records = await run_records(store, "t1", "r1")
        contents = [r["content"] for r in records]
        assert seqs(records) == list(range(1, len(records) + 1))
        assert len(set(contents)) == len(contents)
        assert finished <= set(contents)
        assert set(contents[:-5]) - finished <= {f"m{i}" for i in range(0, 60, 3)}
        assert records[-5:] == after
    if backend.persistent:
        async with opened(backend) as reopened:
            assert await run_records(reopened, "t1", "r1") == records
