"""Deletes (guarantees 2 and 8): counts removed, what stays, and where seq goes on afterwards."""

from __future__ import annotations

from runevents.store import RunEventStore
from tests.backends.registry import Backend
from tests.conformance.builders import event, message, opened, run_records, seqs, thread_records, trace

RUNS = ["r1", "r2", "r3"]


async def write_three_runs(store: RunEventStore) -> list[dict[str, object]]:
    """t1: r1 = seqs 1-3, r2 = 4-7 (the newest but one), r3 = 8; t2 holds a run r2 of its own."""
    written = await store.put_batch(
        [
            message(run_id="r1", content={"id": "m1"}),  # 1
            trace(run_id="r1"),  # 2
            message(run_id="r1", content={"id": "m2"}),  # 3
            message(run_id="r2", content={"id": "m1"}, event_type="llm.ai.response"),  # 4
            trace(run_id="r2"),  # 5
            message(run_id="r2", content={"id": "m3"}, user_id="u1"),  # 6
            event(run_id="r2", event_type="run.end", category="lifecycle"),  # 7
            message(run_id="r3", event_type="llm.ai.response"),  # 8
        ]
    )
    await store.put_batch([message("t2", "r2"), trace("t2", "r2")])
    return written


async def test_delete_by_run_removes_the_run_and_keeps_the_rest(store: RunEventStore) -> None:
    written = await write_three_runs(store)
    assert await store.delete_by_run("t1", "r2") == 4
    assert await run_records(store, "t1", "r2") == []
    assert await run_records(store, "t1", "r1") == written[0:3]
    assert await run_records(store, "t1", "r3") == written[7:8]
    assert await store.list_messages("t1") == [written[0], written[2], written[7]]
    assert await store.list_messages_by_run("t1", "r2") == []
    assert await store.count_messages("t1") == 3
    assert await store.count_messages("t1", user_id="u1") == 0
    assert await store.get_message_seqs("t1", ["m1", "m2", "m3"]) == {"m1": 1, "m2": 3}
    assert await store.get_last_visible_ai_seq_by_run("t1", RUNS) == {"r1": 3, "r3": 8}
    # The same run id in another thread is untouched.
    assert seqs(await run_records(store, "t2", "r2")) == [1, 2]
    assert await store.count_messages("t2") == 1


async def test_seq_goes_on_after_delete_by_run(store: RunEventStore) -> None:
    await write_three_runs(store)
    assert await store.delete_by_run("t1", "r2") == 4
    assert (await store.put(**message(run_id="r4")))["seq"] == 9
    assert seqs(await thread_records(store, "t1", [*RUNS, "r4"])) == [1, 2, 3, 8, 9]


async def test_seq_is_never_reused_when_the_deleted_run_held_the_newest_seqs(store: RunEventStore) -> None:
    await write_three_runs(store)
    assert await store.delete_by_run("t1", "r3") == 1
    assert await store.delete_by_run("t1", "r2") == 4
    record = await store.put(**message(run_id="r2", content={"id": "m3"}))
    assert record["seq"] == 9
    (batched,) = await store.put_batch([trace(run_id="r3")])
    assert batched["seq"] == 10
    assert await store.get_message_seqs("t1", ["m3"]) == {"m3": 9}
    assert seqs(await thread_records(store, "t1", RUNS)) == [1, 2, 3, 9, 10]


async def test_seq_is_never_reused_after_every_run_is_deleted(store: RunEventStore) -> None:
    await write_three_runs(store)
    assert [await store.delete_by_run("t1", run_id) for run_id in RUNS] == [3, 4, 1]
    assert await store.count_messages("t1") == 0
    assert await store.list_messages("t1") == []
    assert (await store.put(**message()))["seq"] == 9


async def test_seq_is_never_reused_after_a_delete_and_reopening(backend: Backend) -> None:
    async with opened(backend) as first:
        await write_three_runs(first)
        assert await first.delete_by_run("t1", "r3") == 1
    if not backend.persistent:
        return
    async with opened(backend) as second:
        assert seqs(await thread_records(second, "t1", RUNS)) == [1, 2, 3, 4, 5, 6, 7]
        assert (await second.put(**message(run_id="r3")))["seq"] == 9


async def test_delete_by_thread_empties_the_thread_and_restarts_seq(store: RunEventStore) -> None:
    await write_three_runs(store)
    assert await store.delete_by_thread("t1") == 8
    for run_id in RUNS:
        assert await run_records(store, "t1", run_id) == []
        assert await store.list_messages_by_run("t1", run_id) == []
    assert await store.list_messages("t1") == []
    assert await store.count_messages("t1") == 0
    assert await store.get_message_seqs("t1", ["m1", "m2", "m3"]) == {}
    assert await store.get_last_visible_ai_seq_by_run("t1", RUNS) == {}
    # Other threads are untouched and go on from their own counters.
    assert seqs(await run_records(store, "t2", "r2")) == [1, 2]
    assert (await store.put(**message("t2", "r2")))["seq"] == 3
    # The next write to the deleted thread starts again at 1.
    fresh = await store.put(**message(run_id="r2", content={"id": "m9"}))
    assert fresh["seq"] == 1
    assert (await store.put_batch([trace(run_id="r1"), message(run_id="r1")]))[1]["seq"] == 3
    assert seqs(await thread_records(store, "t1", RUNS)) == [1, 2, 3]
    assert await store.count_messages("t1") == 2
    assert await store.get_message_seqs("t1", ["m1", "m9"]) == {"m9": 1}


async def test_delete_by_thread_survives_reopening(backend: Backend) -> None:
    async with opened(backend) as first:
        await write_three_runs(first)
        assert await first.delete_by_thread("t1") == 8
    if not backend.persistent:
        return
    async with opened(backend) as second:
        assert await thread_records(second, "t1", RUNS) == []
        assert await second.count_messages("t1") == 0
        assert (await second.put(**message()))["seq"] == 1
        assert seqs(await run_records(second, "t2", "r2")) == [1, 2]


async def test_deleting_what_is_not_there_removes_nothing(store: RunEventStore) -> None:
    written = await write_three_runs(store)
    assert await store.delete_by_thread("nope") == 0
    assert await store.delete_by_run("nope", "r1") == 0
    assert await store.delete_by_run("t1", "nope") == 0
    assert await store.delete_by_run("t2", "r1") == 0
    assert await store.delete_by_run("t1", "r3") == 1
    assert await store.delete_by_run("t1", "r3") == 0
    assert await store.delete_by_thread("t2") == 2
    assert await store.delete_by_thread("t2") == 0
    assert await thread_records(store, "t1", RUNS) == written[:7]
    assert (await store.put(**message()))["seq"] == 9
    # A thread never written to starts at 1 after a delete of nothing.
    assert (await store.put(**message("nope")))["seq"] == 1


async def test_counts_after_deletes(store: RunEventStore) -> None:
    await write_three_runs(store)
    assert await store.count_messages("t1") == 5
    assert await store.count_messages("t1", user_id="u1") == 1
    assert await store.delete_by_run("t1", "r1") == 3
    assert await store.count_messages("t1") == 3
    await store.put(**message(run_id="r1"))
    assert await store.count_messages("t1") == 4
    assert await store.delete_by_thread("t1") == 6
    assert await store.count_messages("t1") == 0
    assert await store.count_messages("t2") == 1


async def test_put_if_absent_creates_again_after_its_run_was_deleted(store: RunEventStore) -> None:
    receipt = event(event_type="run.end", category="lifecycle")
    first, created = await store.put_if_absent(**receipt)
    assert (first["seq"], created) == (1, True)
    await store.put(**message(run_id="r2"))
    assert await store.delete_by_run("t1", "r1") == 1
    again, created = await store.put_if_absent(**receipt)
    assert created is True
    assert again["seq"] == 3
    assert again["event_id"] != first["event_id"]
    assert await store.put_if_absent(**receipt) == (again, False)
    assert await store.delete_by_thread("t1") == 2
    after_thread, created = await store.put_if_absent(**receipt)
    assert (after_thread["seq"], created) == (1, True)
