"""Paging `list_messages` and `list_messages_by_run`: latest, before, after, both, limits, users.

One thread ("t1") is laid out below; every expected page is written out by hand as a seq list and
compared with the exact records the writes returned.
"""

from __future__ import annotations

from typing import Any

import pytest

from runevents.errors import InvalidQueryError
from runevents.store import RunEventStore
from tests.conformance.builders import Record, event, message, seqs, trace

# seq: (run, category, user)
LAYOUT: dict[int, tuple[str, str, str | None]] = {
    1: ("r1", "message", "u1"),
    2: ("r1", "trace", "u1"),
    3: ("r2", "message", "u2"),
    4: ("r1", "message", "u1"),
    5: ("r1", "lifecycle", None),
    6: ("r1", "message", "u2"),
    7: ("r2", "message", None),
    8: ("r2", "trace", "u2"),
    9: ("r1", "message", "u1"),
    10: ("r1", "message", "u2"),
    11: ("r2", "message", None),
    12: ("r1", "lifecycle", "u1"),
}
THREAD_MESSAGES = [1, 3, 4, 6, 7, 9, 10, 11]
RUN1_MESSAGES = [1, 4, 6, 9, 10]


async def write_layout(store: RunEventStore) -> dict[int, Record]:
    """Write LAYOUT to t1 (and noise to t2); return t1's records by seq."""
    events = []
    for seq, (run_id, category, user_id) in LAYOUT.items():
        event_type = "llm.ai.response" if category == "message" else f"{category}.event"
        events.append(
            event("t1", run_id, event_type=event_type, category=category, content=f"e{seq}", user_id=user_id)
        )
    # Oldest timestamps last: order is by seq, never by created_at.
    for i, item in enumerate(events):
        item["created_at"] = f"2024-05-01T10:00:{59 - i:02d}+00:00"
    records = await store.put_batch(events[:5])
    records += [await store.put(**item) for item in events[5:]]
    await store.put_batch([message("t2", "r1", content="other thread") for _ in range(5)])
    assert seqs(records) == list(LAYOUT)
    return {record["seq"]: record for record in records}


# (keyword arguments, expected seqs)
THREAD_PAGES: list[tuple[dict[str, Any], list[int]]] = [
    ({}, THREAD_MESSAGES),
    ({"limit": 3}, [9, 10, 11]),
    ({"limit": 0}, []),
    ({"limit": 1}, [11]),
    ({"limit": 8}, THREAD_MESSAGES),
    ({"limit": 9}, THREAD_MESSAGES),
    ({"limit": 1000}, THREAD_MESSAGES),
    ({"before_seq": 7}, [1, 3, 4, 6]),
    ({"before_seq": 7, "limit": 2}, [4, 6]),
    ({"before_seq": 6, "limit": 50}, [1, 3, 4]),
    ({"before_seq": 5, "limit": 2}, [3, 4]),
    ({"before_seq": 2}, [1]),
    ({"before_seq": 1}, []),
    ({"before_seq": 1, "limit": 5}, []),
    ({"before_seq": 100, "limit": 2}, [10, 11]),
    ({"before_seq": 7, "limit": 0}, []),
    ({"after_seq": 3, "limit": 2}, [4, 6]),
    ({"after_seq": 4}, [6, 7, 9, 10, 11]),
    ({"after_seq": 0, "limit": 3}, [1, 3, 4]),
    ({"after_seq": 0}, THREAD_MESSAGES),
    ({"after_seq": 5, "limit": 1}, [6]),
    ({"after_seq": 10}, [11]),
    ({"after_seq": 11}, []),
    ({"after_seq": 12}, []),
    ({"after_seq": 100}, []),
    ({"after_seq": 3, "limit": 0}, []),
    ({"after_seq": 3, "before_seq": 10}, [4, 6, 7, 9]),
    ({"after_seq": 3, "before_seq": 10, "limit": 2}, [4, 6]),
    ({"after_seq": 3, "before_seq": 10, "limit": 4}, [4, 6, 7, 9]),
    ({"after_seq": 0, "before_seq": 100, "limit": 3}, [1, 3, 4]),
    ({"after_seq": 9, "before_seq": 10}, []),
    ({"after_seq": 6, "before_seq": 7}, []),
    ({"after_seq": 10, "before_seq": 3}, []),
    ({"after_seq": 3, "before_seq": 10, "limit": 0}, []),
]

RUN_PAGES: list[tuple[dict[str, Any], list[int]]] = [
    ({}, RUN1_MESSAGES),
    ({"limit": 2}, [9, 10]),
    ({"limit": 0}, []),
    ({"limit": 1}, [10]),
    ({"limit": 5}, RUN1_MESSAGES),
    ({"limit": 6}, RUN1_MESSAGES),
    ({"limit": 1000}, RUN1_MESSAGES),
    ({"before_seq": 9, "limit": 2}, [4, 6]),
    ({"before_seq": 7}, [1, 4, 6]),
    ({"before_seq": 2}, [1]),
    ({"before_seq": 1}, []),
    ({"before_seq": 100, "limit": 3}, [6, 9, 10]),
    ({"after_seq": 4, "limit": 2}, [6, 9]),
    ({"after_seq": 1}, [4, 6, 9, 10]),
    ({"after_seq": 0, "limit": 2}, [1, 4]),
    ({"after_seq": 10}, []),
    ({"after_seq": 100}, []),
    ({"after_seq": 1, "before_seq": 10}, [4, 6, 9]),
    ({"after_seq": 1, "before_seq": 10, "limit": 2}, [4, 6]),
    ({"after_seq": 6, "before_seq": 9}, []),
    ({"after_seq": 9, "before_seq": 4}, []),
]

USER_PAGES: list[tuple[dict[str, Any], list[int]]] = [
    ({"user_id": None}, THREAD_MESSAGES),
    ({"user_id": "u1"}, [1, 4, 9]),
    ({"user_id": "u2"}, [3, 6, 10]),
    ({"user_id": "nobody"}, []),
    # The user filter applies before the limit.
    ({"user_id": "u1", "limit": 2}, [4, 9]),
    ({"user_id": "u2", "limit": 1}, [10]),
    ({"user_id": "u1", "after_seq": 0, "limit": 2}, [1, 4]),
    ({"user_id": "u2", "after_seq": 3, "limit": 1}, [6]),
    ({"user_id": "u1", "before_seq": 9, "limit": 1}, [4]),
    ({"user_id": "u2", "before_seq": 10, "limit": 5}, [3, 6]),
    ({"user_id": "u1", "after_seq": 1, "before_seq": 10}, [4, 9]),
    ({"user_id": "u2", "after_seq": 1, "before_seq": 11, "limit": 1}, [3]),
    ({"user_id": "u1", "limit": 0}, []),
]

RUN_USER_PAGES: list[tuple[dict[str, Any], list[int]]] = [
    ({"user_id": None}, RUN1_MESSAGES),
    ({"user_id": "u1"}, [1, 4, 9]),
    ({"user_id": "u2"}, [6, 10]),
    ({"user_id": "nobody"}, []),
    ({"user_id": "u1", "limit": 2}, [4, 9]),
    ({"user_id": "u2", "limit": 1}, [10]),
    ({"user_id": "u1", "after_seq": 1, "limit": 1}, [4]),
    ({"user_id": "u2", "before_seq": 10}, [6]),
]


def case_id(case: tuple[dict[str, Any], list[int]]) -> str:
    return ",".join(f"{key}={value}" for key, value in case[0].items()) or "defaults"


@pytest.mark.parametrize("case", THREAD_PAGES + USER_PAGES, ids=case_id)
async def test_list_messages_pages(store: RunEventStore, case: tuple[dict[str, Any], list[int]]) -> None:
    written = await write_layout(store)
    kwargs, expected = case
    assert await store.list_messages("t1", **kwargs) == [written[seq] for seq in expected]


@pytest.mark.parametrize("case", RUN_PAGES + RUN_USER_PAGES, ids=case_id)
async def test_list_messages_by_run_pages(
    store: RunEventStore, case: tuple[dict[str, Any], list[int]]
) -> None:
    written = await write_layout(store)
    kwargs, expected = case
    assert await store.list_messages_by_run("t1", "r1", **kwargs) == [written[seq] for seq in expected]


async def test_every_page_case_against_one_store(store: RunEventStore) -> None:
    # The same pages again, all from one store: reads must not disturb one another.
    written = await write_layout(store)
    for kwargs, expected in THREAD_PAGES + USER_PAGES:
        assert seqs(await store.list_messages("t1", **kwargs)) == expected, kwargs
    for kwargs, expected in RUN_PAGES + RUN_USER_PAGES:
        assert seqs(await store.list_messages_by_run("t1", "r1", **kwargs)) == expected, kwargs
    assert await store.list_messages_by_run("t1", "r2") == [written[s] for s in (3, 7, 11)]


async def test_reads_of_what_is_not_there_are_empty(store: RunEventStore) -> None:
    await write_layout(store)
    await store.put(**event("t3", "r9", event_type="run.start", category="lifecycle"))
    assert await store.list_messages("nope") == []
    assert await store.list_messages("nope", after_seq=0, before_seq=10, limit=5, user_id="u1") == []
    assert await store.list_messages_by_run("nope", "r1") == []
    assert await store.list_messages_by_run("t1", "nope") == []
    # A run that exists but has no messages.
    assert await store.list_messages_by_run("t3", "r9") == []
    assert await store.list_messages("t3") == []


async def test_paging_backwards_through_a_long_thread_visits_every_message_once(
    store: RunEventStore,
) -> None:
    batch = [message(content=f"m{i}") if i % 4 else trace() for i in range(1, 101)]
    written = await store.put_batch(batch)
    messages = [r for r in written if r["category"] == "message"]
    pages: list[list[Record]] = []
    page = await store.list_messages("t1", limit=7)
    while page:
        pages.append(page)
        page = await store.list_messages("t1", limit=7, before_seq=page[0]["seq"])
    assert [record for page in reversed(pages) for record in page] == messages
    assert [len(page) for page in pages] == [7] * 10 + [5]


async def test_paging_forwards_through_a_long_thread_visits_every_message_once(
    store: RunEventStore,
) -> None:
    batch = []
    for i in range(1, 101):
        run_id = "r1" if i % 3 else "r2"
        batch.append(message(run_id=run_id, content=f"m{i}") if i % 4 else trace(run_id=run_id))
    written = await store.put_batch(batch)

    async def thread_page(after: int) -> list[Record]:
        return await store.list_messages("t1", limit=6, after_seq=after)

    async def run_page(after: int) -> list[Record]:
        return await store.list_messages_by_run("t1", "r1", limit=6, after_seq=after)

    for lister, wanted in (
        (thread_page, [r for r in written if r["category"] == "message"]),
        (run_page, [r for r in written if r["category"] == "message" and r["run_id"] == "r1"]),
    ):
        visited: list[Record] = []
        after = 0
        while page := await lister(after):
            assert len(page) <= 6
            visited.extend(page)
            after = page[-1]["seq"]
        assert visited == wanted


@pytest.mark.parametrize("limit", [-1, -50])
async def test_a_negative_limit_is_an_invalid_query(store: RunEventStore, limit: int) -> None:
    await write_layout(store)
    with pytest.raises(InvalidQueryError) as caught:
        await store.list_messages("t1", limit=limit)
    assert isinstance(caught.value, ValueError)
    with pytest.raises(InvalidQueryError):
        await store.list_messages("t1", limit=limit, after_seq=2)
    with pytest.raises(InvalidQueryError):
        await store.list_messages("t1", limit=limit, before_seq=9)
    with pytest.raises(InvalidQueryError):
        await store.list_messages("nope", limit=limit)
    with pytest.raises(InvalidQueryError):
        await store.list_messages_by_run("t1", "r1", limit=limit)
    with pytest.raises(InvalidQueryError):
        await store.list_messages_by_run("t1", "r1", limit=limit, after_seq=0, before_seq=10)
    with pytest.raises(InvalidQueryError):
        await store.list_events("t1", "r1", limit=limit)


async def test_message_pages_are_ascending_by_seq_not_by_created_at(store: RunEventStore) -> None:
    written = await write_layout(store)
    page = await store.list_messages("t1")
    assert page == [written[s] for s in THREAD_MESSAGES]
    created = [record["created_at"] for record in page]
    assert created == sorted(created, reverse=True)
