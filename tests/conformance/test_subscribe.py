"""subscribe(): the stored records after a seq, then each new one, in order, with no gap and no duplicate."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from runevents.errors import InvalidQueryError, ThreadDeletedError
from runevents.store import RunEventStore
from runevents.store.subscriptions import PAGE
from tests.conformance.builders import event, message, seqs, trace

# Long enough for the bus, whose records become readable once the projector has applied them.
WAIT_S = 30.0


async def take(records: AsyncGenerator[dict[str, Any], None], count: int) -> list[dict[str, Any]]:
    """The next `count` records of a subscription (failing the test if they do not come in time)."""
    taken: list[dict[str, Any]] = []
    async with asyncio.timeout(WAIT_S):
        while len(taken) < count:
            taken.append(await anext(records))
    return taken


async def nothing_more(records: AsyncGenerator[dict[str, Any], None], seconds: float = 0.5) -> None:
    """Assert the subscription yields nothing for a while (the timeout ends the subscription)."""
    try:
        async with asyncio.timeout(seconds):
            extra = await anext(records)
    except TimeoutError:
        return
    pytest.fail(f"unexpected record {extra['seq']}")


async def test_a_subscription_catches_up_then_follows_new_records(store: RunEventStore) -> None:
    written = await store.put_batch([message(), trace(), message()])
    records = store.subscribe("t1")
    try:
        assert await take(records, 3) == written
        later = await store.put_batch([trace(), message(run_id="r2")])
        (receipt, created) = await store.put_if_absent(**event(event_type="run.end", category="outputs"))
        assert created
        assert await take(records, 3) == [*later, receipt]
    finally:
        await records.aclose()


async def test_a_subscription_resumes_after_the_seq_it_is_given(store: RunEventStore) -> None:
    written = await store.put_batch([message() for _ in range(5)])
    records = store.subscribe("t1", after_seq=3)
    try:
        assert await take(records, 2) == written[3:]
        await nothing_more(records)
    finally:
        await records.aclose()


async def test_a_subscription_of_an_empty_thread_waits_for_its_first_record(store: RunEventStore) -> None:
    records = store.subscribe("t1")
    try:
        first = asyncio.ensure_future(take(records, 1))
        await asyncio.sleep(0.2)
        assert not first.done()
        written = await store.put(**message())
        assert await first == [written]
    finally:
        await records.aclose()


async def test_a_catch_up_longer_than_a_page_comes_whole_and_in_order(store: RunEventStore) -> None:
    total = PAGE * 2 + 17
    for start in range(0, total, 250):
        await store.put_batch([trace(content=f"e{n}") for n in range(start, min(total, start + 250))])
    records = store.subscribe("t1")
    try:
        assert seqs(await take(records, total)) == list(range(1, total + 1))
    finally:
        await records.aclose()


async def test_filters_by_run_and_category_apply_to_catch_up_and_live(store: RunEventStore) -> None:
    await store.put_batch([message(), trace(), message(run_id="r2"), trace(run_id="r2")])
    by_run = store.subscribe("t1", run_id="r2")
    by_category = store.subscribe("t1", categories=["trace"])
    try:
        assert seqs(await take(by_run, 2)) == [3, 4]
        assert seqs(await take(by_category, 2)) == [2, 4]
        await store.put_batch([message(), trace(run_id="r2"), message(run_id="r2")])
        assert seqs(await take(by_run, 2)) == [6, 7]
        assert seqs(await take(by_category, 1)) == [6]
        await nothing_more(by_category)
    finally:
        await by_run.aclose()
        await by_category.aclose()


async def test_a_subscription_with_a_user_never_yields_another_users_records(store: RunEventStore) -> None:
    await store.put_batch([message(user_id="alice"), message(user_id="bob"), message()])
    records = store.subscribe("t1", user_id="alice")
    try:
        assert seqs(await take(records, 1)) == [1]
        await store.put_batch([message(user_id="bob"), message(user_id="alice")])
        (record,) = await take(records, 1)
        assert (record["seq"], record["user_id"]) == (5, "alice")
        await nothing_more(records)
    finally:
        await records.aclose()


async def test_other_threads_records_are_not_yielded(store: RunEventStore) -> None:
    records = store.subscribe("t1")
    try:
        await store.put_batch([message("t2"), message("t1"), message("t3")])
        (record,) = await take(records, 1)
        assert (record["thread_id"], record["seq"]) == ("t1", 1)
        await nothing_more(records)
    finally:
        await records.aclose()


async def test_delete_by_run_while_subscribed_goes_on_without_the_run(store: RunEventStore) -> None:
    await store.put_batch([message(), message(run_id="r2")])
    records = store.subscribe("t1")
    try:
        assert seqs(await take(records, 2)) == [1, 2]
        await store.put_batch([message(run_id="r2"), message(run_id="r2")])
        assert await store.delete_by_run("t1", "r2") == 3
        # What the subscription did not yield before the delete is gone; seq goes on after it.
        later = await store.put(**message(run_id="r3"))
        assert later["seq"] == 5
        rest = await take(records, 1)
        assert rest[-1] == later
        assert all(record["run_id"] != "r2" for record in rest)
    finally:
        await records.aclose()


async def test_delete_by_thread_ends_the_subscription_with_a_typed_error(store: RunEventStore) -> None:
    await store.put_batch([message(), message()])
    records = store.subscribe("t1")
    assert seqs(await take(records, 2)) == [1, 2]
    waiting = asyncio.ensure_future(anext(records))
    await asyncio.sleep(0.1)
    assert await store.delete_by_thread("t1") == 2
    with pytest.raises(ThreadDeletedError) as raised:
        async with asyncio.timeout(WAIT_S):
            await waiting
    assert raised.value.thread_id == "t1"
    # The thread starts again from seq 1 for a new subscription.
    fresh = store.subscribe("t1")
    try:
        written = await store.put(**message())
        assert await take(fresh, 1) == [written]
    finally:
        await fresh.aclose()


async def test_a_subscriber_that_does_not_read_blocks_no_writer(store: RunEventStore) -> None:
    records = store.subscribe("t1")
    try:
        await store.put(**message())
        assert seqs(await take(records, 1)) == [1]
        # The subscriber stops reading; writers go on as fast as ever, and it catches up later.
        for start in range(2, 202, 20):
            await store.put_batch([trace(content=str(n)) for n in range(start, start + 20)])
        assert seqs(await take(records, 200)) == list(range(2, 202))
    finally:
        await records.aclose()


async def test_subscribers_starting_at_random_moments_see_every_seq_once(store: RunEventStore) -> None:
    total, subscribers = 400, 6
    rng = random.Random(16)
    done = asyncio.Event()

    async def write() -> None:
        written = 0
        while written < total:
            size = min(total - written, rng.randint(1, 12))
            await store.put_batch([trace(run_id=f"r{written % 3}") for _ in range(size)])
            written += size
            await asyncio.sleep(rng.random() / 100)
        done.set()

    async def subscribe(delay: float, after_seq: int) -> list[int]:
        await asyncio.sleep(delay)
        records = store.subscribe("t1", after_seq=after_seq)
        try:
            return seqs(await take(records, total - after_seq))
        finally:
            await records.aclose()

    starts = [(rng.random() * 0.5, rng.choice([0, 0, rng.randint(0, 50)])) for _ in range(subscribers)]
    writer = asyncio.ensure_future(write())
    seen = await asyncio.gather(*(subscribe(delay, after) for delay, after in starts))
    await writer
    for (_, after_seq), got in zip(starts, seen, strict=True):
        assert got == list(range(after_seq + 1, total + 1))


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"thread_id": ""}, "thread_id"),
        ({"thread_id": "t1", "after_seq": -1}, "after_seq"),
        ({"thread_id": "t1", "after_seq": True}, "after_seq"),
        ({"thread_id": "t1", "run_id": "a\x00b"}, "run_id"),
        ({"thread_id": "t1", "categories": "message"}, "categories"),
        ({"thread_id": "t1", "user_id": 7}, "user_id"),
    ],
)
def test_bad_arguments_are_refused_when_subscribing_not_later(
    store: RunEventStore, arguments: dict[str, Any], named: str
) -> None:
    options = dict(arguments)
    thread_id = options.pop("thread_id")
    with pytest.raises(InvalidQueryError) as raised:
        store.subscribe(thread_id, **options)
    assert raised.value.argument == named
