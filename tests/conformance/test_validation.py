"""Validation (guarantee 6): a bad event is an error naming its field, and nothing of its batch is written."""

from __future__ import annotations

from typing import Any

import pytest

from runevents.errors import InvalidEventError
from runevents.store import RunEventStore
from tests.conformance.builders import event, message, run_records, seqs, trace

MISSING = object()  # an override that removes the key

PUT_KEYS = {"thread_id", "run_id", "event_type", "category", "content", "metadata", "created_at", "user_id"}


class Opaque:
    """An object that is neither a str, a dict nor a list."""


# (overrides of a good event, the field the error must name)
CASES: list[Any] = [
    # ids: non-empty, at most 64 characters, strings, no control characters, no lone surrogates
    pytest.param({"thread_id": ""}, "thread_id", id="thread_id-empty"),
    pytest.param({"thread_id": "t" * 65}, "thread_id", id="thread_id-65"),
    pytest.param({"thread_id": 7}, "thread_id", id="thread_id-int"),
    pytest.param({"thread_id": None}, "thread_id", id="thread_id-none"),
    pytest.param({"thread_id": b"t1"}, "thread_id", id="thread_id-bytes"),
    pytest.param({"thread_id": "t\x00"}, "thread_id", id="thread_id-nul"),
    pytest.param({"thread_id": "t\ud800"}, "thread_id", id="thread_id-surrogate"),
    pytest.param({"run_id": ""}, "run_id", id="run_id-empty"),
    pytest.param({"run_id": "r" * 65}, "run_id", id="run_id-65"),
    pytest.param({"run_id": 1.5}, "run_id", id="run_id-float"),
    pytest.param({"run_id": None}, "run_id", id="run_id-none"),
    pytest.param({"run_id": "r\x00"}, "run_id", id="run_id-nul"),
    pytest.param({"run_id": "\udc00"}, "run_id", id="run_id-surrogate"),
    pytest.param({"user_id": ""}, "user_id", id="user_id-empty"),
    pytest.param({"user_id": "u" * 65}, "user_id", id="user_id-65"),
    pytest.param({"user_id": 42}, "user_id", id="user_id-int"),
    pytest.param({"user_id": "u\x00"}, "user_id", id="user_id-nul"),
    pytest.param({"user_id": "u\ud800"}, "user_id", id="user_id-surrogate"),
    pytest.param({"event_type": ""}, "event_type", id="event_type-empty"),
    pytest.param({"event_type": "e" * 33}, "event_type", id="event_type-33"),
    pytest.param({"event_type": None}, "event_type", id="event_type-none"),
    pytest.param({"event_type": ["run.end"]}, "event_type", id="event_type-list"),
    pytest.param({"event_type": "run\x00end"}, "event_type", id="event_type-nul"),
    pytest.param({"category": ""}, "category", id="category-empty"),
    pytest.param({"category": "c" * 17}, "category", id="category-17"),
    pytest.param({"category": 3}, "category", id="category-int"),
    pytest.param({"category": "mess\x00age"}, "category", id="category-nul"),
    # required and unknown fields
    pytest.param({"thread_id": MISSING}, "thread_id", id="missing-thread_id"),
    pytest.param({"run_id": MISSING}, "run_id", id="missing-run_id"),
    pytest.param({"event_type": MISSING}, "event_type", id="missing-event_type"),
    pytest.param({"category": MISSING}, "category", id="missing-category"),
    pytest.param({"tenant": "acme"}, "tenant", id="unknown-field"),
    pytest.param({"seq": 5}, "seq", id="unknown-field-seq"),
    # created_at: parseable and timezone-aware
    pytest.param({"created_at": "2024-05-01T10:00:00"}, "created_at", id="created_at-naive"),
    pytest.param({"created_at": "2024-05-01T10:00:00.123456"}, "created_at", id="created_at-naive-micro"),
    pytest.param({"created_at": "yesterday"}, "created_at", id="created_at-unparseable"),
    pytest.param({"created_at": ""}, "created_at", id="created_at-empty"),
    pytest.param({"created_at": "2024-13-01T10:00:00+00:00"}, "created_at", id="created_at-month-13"),
    pytest.param({"created_at": 1714557600}, "created_at", id="created_at-int"),
    # content: a str, a dict or a list, JSON-serializable, valid Unicode
    pytest.param({"content": 5}, "content", id="content-int"),
    pytest.param({"content": None}, "content", id="content-none"),
    pytest.param({"content": b"bytes"}, "content", id="content-bytes"),
    pytest.param({"content": 1.5}, "content", id="content-float"),
    pytest.param({"content": True}, "content", id="content-bool"),
    pytest.param({"content": Opaque()}, "content", id="content-object"),
    pytest.param({"content": {1: "a"}}, "content", id="content-int-key"),
    pytest.param({"content": {"a": {(1, 2): "b"}}}, "content", id="content-nested-tuple-key"),
    pytest.param({"content": [{"ok": 1}, {2: "b"}]}, "content", id="content-list-int-key"),
    pytest.param({"content": {"n": 2**64}}, "content", id="content-int-past-64-bits"),
    pytest.param({"metadata": {"n": [-(2**63) - 1]}}, "metadata", id="metadata-int-past-64-bits"),
    pytest.param({"content": "lone \ud800 surrogate"}, "content", id="content-surrogate"),
    pytest.param({"content": {"text": "\udfff"}}, "content", id="content-dict-surrogate"),
    pytest.param({"content": {"\ud83d": "key"}}, "content", id="content-key-surrogate"),
    pytest.param({"content": [{"type": "text", "text": "a\ud800"}]}, "content", id="content-list-surrogate"),
    # metadata: a dict (or None), JSON-serializable, valid Unicode
    pytest.param({"metadata": "caller"}, "metadata", id="metadata-str"),
    pytest.param({"metadata": ["a"]}, "metadata", id="metadata-list"),
    pytest.param({"metadata": 1}, "metadata", id="metadata-int"),
    pytest.param({"metadata": {1: "a"}}, "metadata", id="metadata-int-key"),
    pytest.param({"metadata": {"nested": {None: 1}}}, "metadata", id="metadata-nested-none-key"),
    pytest.param({"metadata": {"caller": "\ud800"}}, "metadata", id="metadata-surrogate"),
    pytest.param({"metadata": {"\udc00": 1}}, "metadata", id="metadata-key-surrogate"),
]


def _put_case(case: Any) -> bool:
    overrides = case.values[0]
    return set(overrides) <= PUT_KEYS and MISSING not in overrides.values()


# The cases `put` and `put_if_absent` can be called with (no missing or unknown keyword).
PUT_CASES = [case for case in CASES if _put_case(case)]


def spoil(overrides: dict[str, Any]) -> dict[str, Any]:
    """A good message event of t1/r1 with `overrides` applied."""
    bad = message(content="bad", metadata={"k": "v"}, user_id="u1")
    for key, value in overrides.items():
        if value is MISSING:
            del bad[key]
        else:
            bad[key] = value
    return bad


async def write_before(store: RunEventStore) -> list[dict[str, Any]]:
    """The state every case starts from: two events in t1, nothing in t2."""
    return [await store.put(**message(content="kept", user_id="u1")), await store.put(**trace())]


async def assert_unchanged(store: RunEventStore, before: list[dict[str, Any]]) -> None:
    """Nothing was written since `write_before`, and the next writes get the next seqs."""
    assert await run_records(store, "t1", "r1") == before
    assert await store.list_messages("t1") == before[:1]
    assert await store.count_messages("t1") == 1
    assert await store.count_messages("t1", user_id="u1") == 1
    assert await store.list_messages("t2") == []
    assert await run_records(store, "t2", "r1") == []
    assert await store.count_messages("t2") == 0
    assert (await store.put(**message(content="next")))["seq"] == 3
    assert (await store.put(**message(thread_id="t2", content="next")))["seq"] == 1


@pytest.mark.parametrize(("overrides", "field"), CASES)
async def test_a_bad_event_in_a_batch_writes_nothing_of_the_batch(
    store: RunEventStore, overrides: dict[str, Any], field: str
) -> None:
    before = await write_before(store)
    batch = [
        message(content="good before"),
        message(thread_id="t2", content="good before, other thread"),
        spoil(overrides),
        message(content="good after"),
        trace(thread_id="t2", content="good after, other thread"),
    ]
    with pytest.raises(InvalidEventError) as caught:
        await store.put_batch(batch)
    error = caught.value
    assert isinstance(error, ValueError)
    assert error.field == field
    assert error.index == 2
    assert field in str(error)
    await assert_unchanged(store, before)


@pytest.mark.parametrize(("overrides", "field"), PUT_CASES)
async def test_a_bad_event_given_to_put_writes_nothing(
    store: RunEventStore, overrides: dict[str, Any], field: str
) -> None:
    bad = spoil(overrides)
    before = await write_before(store)
    with pytest.raises(InvalidEventError) as caught:
        await store.put(**bad)
    # A single event has no batch position.
    assert (caught.value.field, caught.value.index) == (field, None)
    assert field in str(caught.value)
    with pytest.raises(InvalidEventError) as caught:
        await store.put_if_absent(**bad)
    assert (caught.value.field, caught.value.index) == (field, None)
    await assert_unchanged(store, before)


@pytest.mark.parametrize("position", [0, 1, 3])
async def test_the_error_names_the_position_of_the_bad_event(store: RunEventStore, position: int) -> None:
    batch = [message(content=str(i)) for i in range(4)]
    batch[position] = message(category="c" * 17)
    with pytest.raises(InvalidEventError) as caught:
        await store.put_batch(batch)
    assert (caught.value.field, caught.value.index) == ("category", position)
    assert await store.count_messages("t1") == 0
    assert (await store.put(**message()))["seq"] == 1


async def test_the_first_bad_event_of_a_batch_is_named(store: RunEventStore) -> None:
    batch = [message(), message(run_id=""), message(category="c" * 17)]
    with pytest.raises(InvalidEventError) as caught:
        await store.put_batch(batch)
    assert (caught.value.field, caught.value.index) == ("run_id", 1)
    assert await store.count_messages("t1") == 0


async def test_a_batch_entry_that_is_not_a_dict_writes_nothing(store: RunEventStore) -> None:
    before = await write_before(store)
    batch: list[Any] = [message(), "not an event", message(thread_id="t2")]
    with pytest.raises(InvalidEventError) as caught:
        await store.put_batch(batch)
    assert caught.value.index == 1
    await assert_unchanged(store, before)


async def test_the_longest_allowed_values_are_accepted(store: RunEventStore) -> None:
    thread_id, run_id, user_id = "t" * 64, "r" * 64, "u" * 64
    event_type, category = "e" * 32, "c" * 16
    record = await store.put(
        **event(thread_id, run_id, event_type=event_type, category=category, user_id=user_id)
    )
    (batched,) = await store.put_batch(
        [message(thread_id, run_id, event_type=event_type, user_id=user_id, content="b")]
    )
    receipt, created = await store.put_if_absent(
        **event(thread_id, run_id, event_type="x" * 32, category=category, user_id=user_id)
    )
    assert created
    assert [
        (r["thread_id"], r["run_id"], r["seq"], r["event_type"], r["category"], r["user_id"])
        for r in (record, batched, receipt)
    ] == [
        (thread_id, run_id, 1, event_type, category, user_id),
        (thread_id, run_id, 2, event_type, "message", user_id),
        (thread_id, run_id, 3, "x" * 32, category, user_id),
    ]
    assert await run_records(store, thread_id, run_id) == [record, batched, receipt]
    assert await store.list_messages(thread_id, user_id=user_id) == [batched]
    assert await store.list_messages_by_run(thread_id, run_id) == [batched]
    assert await store.count_messages(thread_id, user_id=user_id) == 1
    assert await store.delete_by_run(thread_id, run_id) == 3
    assert await store.delete_by_thread(thread_id) == 0


async def test_the_shortest_ids_and_an_aware_datetime_are_accepted(store: RunEventStore) -> None:
    record = await store.put(
        **event("t", "r", event_type="x", category="y", user_id="u", created_at="2024-05-01T00:00:00Z")
    )
    assert (record["thread_id"], record["run_id"], record["seq"], record["user_id"]) == ("t", "r", 1, "u")
    assert seqs(await run_records(store, "t", "r")) == [1]
