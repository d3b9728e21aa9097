"""Writes: the returned envelope, seq assignment, event ids, timestamps, batches, put_if_absent."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from runevents.store import RunEventStore
from tests.backends.registry import Backend
from tests.conformance.builders import (
    ENVELOPE,
    envelope,
    event,
    message,
    opened,
    run_records,
    seqs,
    thread_records,
    trace,
)

# --- the envelope (guarantee 4) ------------------------------------------------------------------


async def test_put_returns_the_complete_envelope(store: RunEventStore) -> None:
    record = await store.put(
        thread_id="t1",
        run_id="r1",
        event_type="llm.ai.response",
        category="message",
        content={"type": "ai", "id": "m1", "content": "hello"},
        metadata={"caller": "agent", "task_id": "k1"},
        created_at="2024-05-01T12:30:45.123456+02:00",
        user_id="u1",
    )
    assert set(ENVELOPE) <= set(record)
    assert envelope(record) == {
        "thread_id": "t1",
        "run_id": "r1",
        "seq": 1,
        "event_id": record["event_id"],
        "event_type": "llm.ai.response",
        "category": "message",
        "content": {"type": "ai", "id": "m1", "content": "hello"},
        "metadata": {"caller": "agent", "task_id": "k1"},
        "created_at": "2024-05-01T10:30:45.123456+00:00",
        "user_id": "u1",
    }
    assert await run_records(store, "t1", "r1") == [record]


async def test_put_with_only_the_required_fields_fills_in_the_defaults(store: RunEventStore) -> None:
    record = await store.put(thread_id="t1", run_id="r1", event_type="run.start", category="lifecycle")
    assert {k: v for k, v in envelope(record).items() if k not in ("event_id", "created_at")} == {
        "thread_id": "t1",
        "run_id": "r1",
        "seq": 1,
        "event_type": "run.start",
        "category": "lifecycle",
        "content": "",
        "metadata": {},
        "user_id": None,
    }
    assert await run_records(store, "t1", "r1") == [record]


async def test_the_record_a_read_returns_is_the_record_put_returned(store: RunEventStore) -> None:
    written = [
        await store.put(**message(content="a", user_id="u1")),
        await store.put(**trace(content={"k": [1, 2.5, None, True]})),
        await store.put(**event(event_type="run.end", category="lifecycle", metadata={"x": "y"})),
        await store.put(**message(content=[{"type": "text", "text": "b"}])),
    ]
    assert await run_records(store, "t1", "r1") == written
    assert await store.list_messages("t1") == [written[0], written[3]]
    assert await store.list_messages_by_run("t1", "r1") == [written[0], written[3]]


# --- seq (guarantee 2) ---------------------------------------------------------------------------


async def test_seq_starts_at_one_and_is_gap_free_across_categories_and_runs(store: RunEventStore) -> None:
    written = [
        await store.put(**message(run_id="r1")),
        await store.put(**trace(run_id="r1")),
        await store.put(**message(run_id="r2")),
        await store.put(**event(run_id="r1", category="lifecycle", event_type="run.end")),
        await store.put(**message(run_id="r3")),
    ]
    assert seqs(written) == [1, 2, 3, 4, 5]
    assert seqs(await thread_records(store, "t1", ["r1", "r2", "r3"])) == [1, 2, 3, 4, 5]


async def test_each_thread_has_its_own_seq(store: RunEventStore) -> None:
    got = []
    for thread_id in ["a", "b", "a", "c", "a", "b"]:
        record = await store.put(**message(thread_id=thread_id))
        got.append((thread_id, record["seq"]))
    assert got == [("a", 1), ("b", 1), ("a", 2), ("c", 1), ("a", 3), ("b", 2)]
    assert seqs(await store.list_messages("a")) == [1, 2, 3]
    assert seqs(await store.list_messages("b")) == [1, 2]
    assert seqs(await store.list_messages("c")) == [1]


async def test_the_same_run_id_in_two_threads_is_two_runs(store: RunEventStore) -> None:
    first = await store.put(**message(thread_id="ta", run_id="r1", content="in a"))
    second = await store.put(**message(thread_id="tb", run_id="r1", content="in b"))
    assert (first["seq"], second["seq"]) == (1, 1)
    assert await run_records(store, "ta", "r1") == [first]
    assert await run_records(store, "tb", "r1") == [second]


# --- event ids -----------------------------------------------------------------------------------


async def test_event_ids_are_unique_uuid7_strings_of_the_moment_of_writing(store: RunEventStore) -> None:
    before_ms = int(datetime.now(UTC).timestamp() * 1000)
    written = [await store.put(**message(content=str(i))) for i in range(20)]
    written += await store.put_batch([trace(content=str(i)) for i in range(20)])
    after_ms = int(datetime.now(UTC).timestamp() * 1000)
    ids = [record["event_id"] for record in written]
    assert len(set(ids)) == 40
    for event_id in ids:
        assert isinstance(event_id, str)
        parsed = uuid.UUID(event_id)
        assert str(parsed) == event_id  # canonical lower-case hyphenated form
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        # A UUIDv7 starts with its Unix time in milliseconds (a random uuid4 would be far off).
        assert before_ms - 2000 <= parsed.int >> 80 <= after_ms + 2000
    assert [record["event_id"] for record in await run_records(store, "t1", "r1")] == ids


# --- created_at (guarantee 4) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("2024-05-01T12:30:45.123456+02:00", "2024-05-01T10:30:45.123456+00:00"),
        ("2024-05-01T10:30:45.000001Z", "2024-05-01T10:30:45.000001+00:00"),
        ("2024-05-01T10:30:45+00:00", "2024-05-01T10:30:45+00:00"),
        ("2024-01-01T01:00:00.5+05:00", "2023-12-31T20:00:00.500000+00:00"),
        ("2024-12-31T20:00:00.999999-05:30", "2025-01-01T01:30:00.999999+00:00"),
    ],
)
async def test_created_at_comes_back_as_the_same_instant_in_utc(
    store: RunEventStore, given: str, expected: str
) -> None:
    record = await store.put(**message(created_at=given))
    assert record["created_at"] == expected
    assert datetime.fromisoformat(record["created_at"]) == datetime.fromisoformat(given)
    assert [r["created_at"] for r in await store.list_messages("t1")] == [expected]
    (batched,) = await store.put_batch([message(created_at=given)])
    assert batched["created_at"] == expected


async def test_created_at_left_out_is_now_in_utc(store: RunEventStore) -> None:
    before = datetime.now(UTC)
    records = [await store.put(**message())]
    records += await store.put_batch([message(), trace()])
    records.append((await store.put_if_absent(**event(event_type="run.end", category="lifecycle")))[0])
    after = datetime.now(UTC)
    for record in records:
        text = record["created_at"]
        assert isinstance(text, str)
        assert text.endswith("+00:00")
        moment = datetime.fromisoformat(text)
        assert moment.utcoffset() == timedelta(0)
        assert moment.isoformat() == text
        assert before - timedelta(seconds=1) <= moment <= after + timedelta(seconds=1)
    assert [r["created_at"] for r in await run_records(store, "t1", "r1")] == [
        r["created_at"] for r in records
    ]


# --- user_id -------------------------------------------------------------------------------------


async def test_writes_record_the_user_they_are_given(store: RunEventStore) -> None:
    with_user = await store.put(**message(user_id="u1"))
    without = await store.put(**message())
    (batched_user, batched_none) = await store.put_batch([trace(user_id="u2"), trace()])
    receipt, _ = await store.put_if_absent(**event(event_type="run.end", category="lifecycle", user_id="u3"))
    users = [r["user_id"] for r in (with_user, without, batched_user, batched_none, receipt)]
    assert users == ["u1", None, "u2", None, "u3"]
    assert [r["user_id"] for r in await run_records(store, "t1", "r1")] == users


# --- put_batch -----------------------------------------------------------------------------------


async def test_put_batch_returns_records_in_input_order_with_each_threads_own_seq(
    store: RunEventStore,
) -> None:
    await store.put(**message(thread_id="ta"))
    batch = [
        message(thread_id="ta", content="a2"),
        trace(thread_id="tb", content="b1"),
        message(thread_id="ta", run_id="r2", content="a3"),
        message(thread_id="tc", content="c1", user_id="u1"),
        message(thread_id="tb", content="b2"),
        event(thread_id="ta", category="lifecycle", event_type="run.end", content="a4"),
    ]
    records = await store.put_batch(batch)
    assert [(r["thread_id"], r["run_id"], r["seq"], r["content"]) for r in records] == [
        ("ta", "r1", 2, "a2"),
        ("tb", "r1", 1, "b1"),
        ("ta", "r2", 3, "a3"),
        ("tc", "r1", 1, "c1"),
        ("tb", "r1", 2, "b2"),
        ("ta", "r1", 4, "a4"),
    ]
    for given, record in zip(batch, records, strict=True):
        assert record["event_type"] == given["event_type"]
        assert record["category"] == given["category"]
        assert record["user_id"] == given["user_id"]
    assert len({r["event_id"] for r in records}) == 6
    assert seqs(await thread_records(store, "ta", ["r1", "r2"])) == [1, 2, 3, 4]
    assert await run_records(store, "tb", "r1") == [records[1], records[4]]
    assert (await store.put(**message(thread_id="tb")))["seq"] == 3


async def test_put_batch_takes_events_with_only_the_required_keys(store: RunEventStore) -> None:
    records = await store.put_batch(
        [
            {"thread_id": "t1", "run_id": "r1", "event_type": "run.start", "category": "lifecycle"},
            {"thread_id": "t1", "run_id": "r1", "event_type": "human", "category": "message", "content": "x"},
        ]
    )
    assert [(r["seq"], r["content"], r["metadata"], r["user_id"]) for r in records] == [
        (1, "", {}, None),
        (2, "x", {}, None),
    ]


async def test_put_batch_of_nothing_writes_nothing(store: RunEventStore) -> None:
    assert await store.put_batch([]) == []
    assert (await store.put(**message()))["seq"] == 1


# --- read-your-writes (guarantee 1) --------------------------------------------------------------


async def test_every_write_is_visible_to_the_next_read(store: RunEventStore) -> None:
    for i in range(1, 6):
        record = await store.put(**message(content=f"m{i}", metadata={"task_id": "k1"}))
        assert (await store.list_messages("t1", limit=1)) == [record]
        assert (await store.list_events("t1", "r1", after_seq=i - 1)) == [record]
        assert await store.count_messages("t1") == i
    batch = await store.put_batch([message(content="b1"), message(run_id="r2", content="b2")])
    assert await store.list_messages("t1", limit=2) == batch
    assert await store.list_messages_by_run("t1", "r2") == [batch[1]]
    receipt, created = await store.put_if_absent(**message(event_type="run.end", content="done"))
    assert created
    assert await store.list_messages("t1", limit=1) == [receipt]
    assert await store.count_messages("t1") == 8


async def test_a_second_store_object_sees_the_writes_of_a_closed_one(backend: Backend) -> None:
    async with opened(backend) as first:
        written = await first.put_batch([message(content="a"), trace(content={"b": 1})])
    if not backend.persistent:
        return
    async with opened(backend) as second:
        assert await run_records(second, "t1", "r1") == written
        assert (await second.put(**message()))["seq"] == 3


# --- put_if_absent -------------------------------------------------------------------------------


async def test_put_if_absent_writes_once_per_run_and_event_type(store: RunEventStore) -> None:
    receipt = event(event_type="run.end", category="lifecycle", content="first", user_id="u1")
    first, created = await store.put_if_absent(**receipt)
    assert created is True
    assert envelope(first) == {
        "thread_id": "t1",
        "run_id": "r1",
        "seq": 1,
        "event_id": first["event_id"],
        "event_type": "run.end",
        "category": "lifecycle",
        "content": "first",
        "metadata": {},
        "created_at": first["created_at"],
        "user_id": "u1",
    }
    again, created = await store.put_if_absent(
        **{**receipt, "content": "second", "metadata": {"x": 1}, "category": "message"}
    )
    assert created is False
    assert again == first
    assert await run_records(store, "t1", "r1") == [first]
    assert await store.count_messages("t1") == 0


async def test_put_if_absent_is_per_run_and_per_event_type(store: RunEventStore) -> None:
    a, created_a = await store.put_if_absent(**event(run_id="r1", event_type="run.end", category="lifecycle"))
    b, created_b = await store.put_if_absent(**event(run_id="r2", event_type="run.end", category="lifecycle"))
    c, created_c = await store.put_if_absent(
        **event(run_id="r1", event_type="run.delivery", category="lifecycle")
    )
    d, created_d = await store.put_if_absent(
        **event(thread_id="t2", run_id="r1", event_type="run.end", category="lifecycle")
    )
    assert (created_a, created_b, created_c, created_d) == (True, True, True, True)
    assert [(r["thread_id"], r["run_id"], r["seq"]) for r in (a, b, c, d)] == [
        ("t1", "r1", 1),
        ("t1", "r2", 2),
        ("t1", "r1", 3),
        ("t2", "r1", 1),
    ]
    again, created = await store.put_if_absent(
        **event(run_id="r2", event_type="run.end", category="lifecycle")
    )
    assert (again, created) == (b, False)


async def test_put_if_absent_takes_its_seq_in_line_with_ordinary_writes(store: RunEventStore) -> None:
    first = await store.put(**message(content="before"))
    receipt, created = await store.put_if_absent(**event(event_type="run.end", category="lifecycle"))
    after = await store.put(**message(content="after"))
    repeat, repeated = await store.put_if_absent(**event(event_type="run.end", category="lifecycle"))
    last = await store.put(**message(content="last"))
    assert created is True
    assert repeated is False
    assert repeat == receipt
    assert seqs([first, receipt, after, last]) == [1, 2, 3, 4]
    assert await run_records(store, "t1", "r1") == [first, receipt, after, last]


async def test_put_if_absent_finds_an_event_written_by_an_ordinary_put(store: RunEventStore) -> None:
    await store.put(**message(run_id="r1", event_type="llm.ai.response", content="other run"))
    written = await store.put(**event(run_id="r2", event_type="run.end", category="lifecycle"))
    found, created = await store.put_if_absent(
        **event(run_id="r2", event_type="run.end", category="lifecycle", content="again")
    )
    assert (found, created) == (written, False)
    fresh, created = await store.put_if_absent(
        **event(run_id="r1", event_type="run.end", category="lifecycle")
    )
    assert created is True
    assert fresh["seq"] == 3
