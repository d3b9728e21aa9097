"""Expiry (issue 20): events removed at seqs, as retention does, on every backend."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from runevents.errors import InvalidQueryError
from runevents.lifecycle.retention import expired_seqs, parse_policy
from runevents.store import RunEventStore
from tests.backends.registry import Backend
from tests.conformance.builders import event, message, opened, seqs, thread_records, trace
from tests.conformance.test_deletes import RUNS, write_three_runs


async def test_expiry_removes_the_seqs_and_keeps_the_counts_and_the_rest_exact(store: RunEventStore) -> None:
    written = await write_three_runs(store)
    # 1 and 3 are messages of r1 (m1, m2), 5 a trace of r2, 8 the last message; 99 is not held.
    assert await store.expire_events("t1", [3, 5, 1, 8, 99]) == 4
    kept = [record for record in written if record["seq"] not in {1, 3, 5, 8}]
    assert await thread_records(store, "t1", RUNS) == kept
    assert seqs(await store.list_messages("t1")) == [4, 6]
    assert seqs(await store.list_messages("t1", limit=1)) == [6]
    assert seqs(await store.list_messages_by_run("t1", "r1")) == []
    assert await store.count_messages("t1") == 2
    assert await store.count_messages("t1", user_id="u1") == 1
    assert await store.get_message_seqs("t1", ["m1", "m2", "m3"]) == {"m1": 4, "m3": 6}
    assert await store.get_last_visible_ai_seq_by_run("t1", RUNS) == {"r2": 6}
    # The seq goes on past the newest, expired, event; the other thread is untouched.
    assert (await store.put(**message(run_id="r4")))["seq"] == 9
    assert seqs(await thread_records(store, "t2", ["r2"])) == [1, 2]
    assert await store.count_messages("t2") == 1
    # Expiring again what is gone removes nothing.
    assert await store.expire_events("t1", [1, 3]) == 0
    assert await store.expire_events("nobody", [1]) == 0


async def test_retention_summaries_give_each_events_seq_run_category_and_time(store: RunEventStore) -> None:
    written = await store.put_batch(
        [
            message(run_id="r1", created_at="2026-01-02T03:04:05.123456+02:00"),
            trace(run_id="r2", created_at="2026-01-02T01:04:06+00:00"),
            event(run_id="r2", event_type="run.end", category="lifecycle"),
        ]
    )
    summaries = await store.retention_summaries("t1")
    assert [(s.seq, s.run_id, s.category) for s in summaries] == [
        (1, "r1", "message"),
        (2, "r2", "trace"),
        (3, "r2", "lifecycle"),
    ]
    assert summaries[0].created_at == datetime(2026, 1, 2, 1, 4, 5, 123456, tzinfo=UTC)
    assert [s.created_at for s in summaries] == [datetime.fromisoformat(r["created_at"]) for r in written]
    assert await store.retention_summaries("nobody") == []


async def test_a_policy_applied_through_the_summaries_keeps_what_it_says(store: RunEventStore) -> None:
    now = datetime.now(UTC)
    old, new = (now - timedelta(days=40)).isoformat(), (now - timedelta(days=1)).isoformat()
    await store.put_batch(
        [
            message(run_id="r1", created_at=old),  # 1: messages are kept forever
            trace(run_id="r1", created_at=old),  # 2: a trace past 7 days
            event(run_id="r1", event_type="run.end", category="lifecycle", created_at=old),  # 3: past 30 days
            trace(run_id="r2", created_at=new),  # 4
            event(run_id="r2", event_type="run.end", category="lifecycle", created_at=new),  # 5
        ]
    )
    policy = parse_policy("max_age=30d; trace: max_age=7d; message: forever")
    expired = expired_seqs(await store.retention_summaries("t1"), policy, now)
    assert expired == [2, 3]
    assert await store.expire_events("t1", expired) == 2
    assert [s.seq for s in await store.retention_summaries("t1")] == [1, 4, 5]
    assert expired_seqs(await store.retention_summaries("t1"), policy, now) == []


@pytest.mark.parametrize(
    ("seqs_given", "says"),
    [
        ([0], "seqs[0]: must be at least 1"),
        ([1, "2"], "seqs[1]: must be an int, got str"),
        ([True], "seqs[0]: must be an int, got bool"),
        ("12", "seqs: must be a collection of ints, got str"),
        (list(range(1, 10_002)), "seqs: must hold at most 10000 items (got 10001)"),
    ],
)
async def test_bad_seqs_are_refused_before_anything_is_removed(
    store: RunEventStore, seqs_given: object, says: str
) -> None:
    await write_three_runs(store)
    with pytest.raises(InvalidQueryError, match="^" + re.escape(says)):
        await store.expire_events("t1", seqs_given)  # type: ignore[arg-type]
    assert len(await store.retention_summaries("t1")) == 8


async def test_expired_events_stay_gone_and_their_seqs_unused_after_reopening(backend: Backend) -> None:
    async with opened(backend) as first:
        await write_three_runs(first)
        assert await first.expire_events("t1", [7, 8]) == 2
    if not backend.persistent:
        return
    async with opened(backend) as second:
        assert [s.seq for s in await second.retention_summaries("t1")] == [1, 2, 3, 4, 5, 6]
        assert await second.count_messages("t1") == 4
        assert (await second.put(**trace(run_id="r3")))["seq"] == 9


async def test_a_thread_keeps_a_retention_policy_of_its_own_until_it_is_taken_back(backend: Backend) -> None:
    policy = parse_policy("max_age=90d; trace: keep_runs=2 max_age=7d; message: forever")
    async with opened(backend) as first:
        assert await first.get_retention("t1") is None
        await first.set_retention("t1", policy)
        await first.set_retention("t2", parse_policy("keep_events=5"))
        await first.set_retention("t2", parse_policy("keep_events=6"))  # the last one counts
        assert await first.get_retention("t1") == policy
        # A delete takes the events, not the thread's policy.
        await first.put(**trace())
        await first.delete_by_thread("t1")
        assert await first.get_retention("t1") == policy
    if backend.persistent:
        async with opened(backend) as second:
            assert await second.get_retention("t1") == policy
            assert await second.get_retention("t2") == parse_policy("keep_events=6")
            await second.set_retention("t1", None)
            assert await second.get_retention("t1") is None


async def test_a_retention_policy_that_is_not_one_is_refused(store: RunEventStore) -> None:
    with pytest.raises(InvalidQueryError, match=r"^policy: must be a RetentionPolicy or None, got str$"):
        await store.set_retention("t1", "max_age=7d")  # type: ignore[arg-type]
    assert await store.get_retention("t1") is None
