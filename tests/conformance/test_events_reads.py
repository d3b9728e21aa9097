"""The other reads: list_events, get_last_visible_ai_seq_by_run, get_message_seqs, count_messages."""

from __future__ import annotations

from typing import Any

import pytest

from runevents.errors import InvalidQueryError
from runevents.store import RunEventStore
from tests.conformance.builders import Record, event, message, seqs, trace

# --- list_events ---------------------------------------------------------------------------------

# seq: (run, event_type, category, task_id, user)
EVENTS_LAYOUT: dict[int, tuple[str, str, str, str | None, str | None]] = {
    1: ("r1", "run.start", "lifecycle", None, "u1"),
    2: ("r1", "llm.human.input", "message", "k1", "u1"),
    3: ("r2", "llm.ai.response", "message", "k1", "u2"),
    4: ("r1", "llm.start", "trace", "k1", None),
    5: ("r1", "llm.ai.response", "message", "k2", "u2"),
    6: ("r1", "tool.call", "trace", "k1", "u1"),
    7: ("r2", "run.end", "lifecycle", None, None),
    8: ("r1", "llm.start", "trace", "k2", "u2"),
    9: ("r1", "llm.ai.response", "message", "k1", "u1"),
    10: ("r1", "tool.call", "trace", None, "u2"),
    11: ("r1", "run.end", "lifecycle", "k1", None),
}
RUN1 = [1, 2, 4, 5, 6, 8, 9, 10, 11]


async def write_events_layout(store: RunEventStore) -> dict[int, Record]:
    events = []
    for seq, (run_id, event_type, category, task_id, user_id) in EVENTS_LAYOUT.items():
        metadata = {"task_id": task_id, "n": seq} if task_id is not None else {"n": seq}
        events.append(
            event(
                "t1",
                run_id,
                event_type=event_type,
                category=category,
                content=f"e{seq}",
                metadata=metadata,
                user_id=user_id,
            )
        )
    records = await store.put_batch(events)
    # The same run id in another thread is another run.
    await store.put_batch([trace("t2", "r1", metadata={"task_id": "k1"}), message("t2", "r1")])
    assert seqs(records) == list(EVENTS_LAYOUT)
    return {record["seq"]: record for record in records}


EVENT_CASES: list[tuple[dict[str, Any], list[int]]] = [
    ({}, RUN1),
    ({"event_types": None}, RUN1),
    ({"event_types": []}, []),
    ({"event_types": ["llm.ai.response"]}, [5, 9]),
    ({"event_types": ["llm.start", "tool.call"]}, [4, 6, 8, 10]),
    ({"event_types": ("run.start", "run.end")}, [1, 11]),
    ({"event_types": {"tool.call"}}, [6, 10]),
    ({"event_types": frozenset({"llm.human.input"})}, [2]),
    ({"event_types": ["no.such.type"]}, []),
    ({"task_id": "k1"}, [2, 4, 6, 9, 11]),
    ({"task_id": "k2"}, [5, 8]),
    ({"task_id": "k9"}, []),
    ({"after_seq": 0}, RUN1),
    ({"after_seq": 5}, [6, 8, 9, 10, 11]),
    ({"after_seq": 7}, [8, 9, 10, 11]),
    ({"after_seq": 11}, []),
    ({"after_seq": 100}, []),
    ({"limit": 0}, []),
    ({"limit": 1}, [1]),
    ({"limit": 3}, [1, 2, 4]),
    ({"limit": 9}, RUN1),
    ({"limit": 10}, RUN1),
    ({"after_seq": 4, "limit": 2}, [5, 6]),
    # Filters apply before the limit: the first matching events, however far apart.
    ({"event_types": ["llm.ai.response", "run.end"], "limit": 2}, [5, 9]),
    ({"event_types": ["tool.call"], "limit": 1}, [6]),
    ({"task_id": "k1", "limit": 3}, [2, 4, 6]),
    ({"task_id": "k1", "after_seq": 4, "limit": 2}, [6, 9]),
    ({"task_id": "k1", "event_types": ["llm.start", "tool.call", "run.end"]}, [4, 6, 11]),
    ({"task_id": "k1", "event_types": ["llm.start", "tool.call", "run.end"], "limit": 2}, [4, 6]),
    ({"task_id": "k2", "event_types": ["tool.call"]}, []),
    ({"event_types": [], "task_id": "k1"}, []),
    ({"user_id": None}, RUN1),
    ({"user_id": "u1"}, [1, 2, 6, 9]),
    ({"user_id": "u2"}, [5, 8, 10]),
    ({"user_id": "nobody"}, []),
    ({"user_id": "u1", "limit": 2, "after_seq": 1}, [2, 6]),
    ({"user_id": "u2", "task_id": "k2"}, [5, 8]),
    ({"user_id": "u1", "event_types": ["llm.ai.response"]}, [9]),
    ({"user_id": "u1", "task_id": "k1", "event_types": ["tool.call", "llm.ai.response"], "limit": 1}, [6]),
]


def case_id(case: tuple[dict[str, Any], list[int]]) -> str:
    return ",".join(f"{key}={value}" for key, value in case[0].items()) or "defaults"


@pytest.mark.parametrize("case", EVENT_CASES, ids=case_id)
async def test_list_events(store: RunEventStore, case: tuple[dict[str, Any], list[int]]) -> None:
    written = await write_events_layout(store)
    kwargs, expected = case
    assert await store.list_events("t1", "r1", **kwargs) == [written[seq] for seq in expected]


async def test_list_events_of_other_runs_and_unknown_ones(store: RunEventStore) -> None:
    written = await write_events_layout(store)
    assert await store.list_events("t1", "r2") == [written[3], written[7]]
    assert seqs(await store.list_events("t2", "r1")) == [1, 2]
    assert await store.list_events("t1", "nope") == []
    assert await store.list_events("nope", "r1") == []
    assert await store.list_events("nope", "r1", event_types=["x"], task_id="k", after_seq=1, limit=5) == []


async def test_list_events_finds_the_few_matching_events_among_many(store: RunEventStore) -> None:
    batch = [trace(content=str(i)) for i in range(1, 11)]
    for position in (3, 6, 8):
        batch[position] = trace(event_type="tool.call", metadata={"task_id": "k7"}, content=str(position + 1))
    written = await store.put_batch(batch)
    assert seqs(await store.list_events("t1", "r1", event_types=["tool.call"], limit=2)) == [4, 7]
    assert seqs(await store.list_events("t1", "r1", task_id="k7", limit=2)) == [4, 7]
    assert await store.list_events("t1", "r1", task_id="k7", limit=3) == [written[3], written[6], written[8]]
    assert seqs(await store.list_events("t1", "r1", task_id="k7", after_seq=4, limit=1)) == [7]


async def test_list_events_returns_500_by_default(store: RunEventStore) -> None:
    written = await store.put_batch(
        [event(category="trace" if i % 2 else "message", content=str(i)) for i in range(1, 503)]
    )
    page = await store.list_events("t1", "r1")
    assert len(page) == 500
    assert page == written[:500]
    assert seqs(await store.list_events("t1", "r1", after_seq=500)) == [501, 502]
    assert seqs(await store.list_events("t1", "r1", limit=1000)) == list(range(1, 503))


async def test_list_events_rejects_a_negative_limit(store: RunEventStore) -> None:
    await write_events_layout(store)
    with pytest.raises(InvalidQueryError) as caught:
        await store.list_events("t1", "r1", limit=-1)
    assert isinstance(caught.value, ValueError)
    with pytest.raises(InvalidQueryError):
        await store.list_events("t1", "r1", limit=-5, event_types=["tool.call"], after_seq=2)


# --- get_last_visible_ai_seq_by_run ----------------------------------------------------------------


async def test_last_visible_ai_seq_by_run(store: RunEventStore) -> None:
    ai = "llm.ai.response"
    await store.put_batch(
        [
            # r1: the legacy type counts; middleware and non-message records after it do not.
            message(run_id="r1", event_type=ai),  # 1
            message(run_id="r1", event_type="ai_message"),  # 2
            message(run_id="r1", event_type=ai, metadata={"caller": "middleware:summarize"}),  # 3
            trace(run_id="r1", event_type=ai),  # 4
            message(run_id="r1", event_type="llm.human.input"),  # 5
            # r2: the caller only disqualifies a "middleware:" prefix.
            message(run_id="r2", event_type=ai, metadata={"caller": "agent"}),  # 6
            message(run_id="r2", event_type=ai, metadata={"caller": "agent:middleware:x"}),  # 7
            message(run_id="r2", event_type=ai, metadata={"caller": "middleware:title"}),  # 8
            # r3: only middleware answers.
            message(run_id="r3", event_type=ai, metadata={"caller": "middleware:a"}),  # 9
            message(run_id="r3", event_type="ai_message", metadata={"caller": "middleware:b"}),  # 10
            # r4: AI responses, but none of category message.
            trace(run_id="r4", event_type=ai),  # 11
            event(run_id="r4", event_type="ai_message", category="lifecycle"),  # 12
            # r5: only a human message.
            message(run_id="r5", event_type="llm.human.input"),  # 13
            # r6: caller given as None is not middleware.
            message(run_id="r6", event_type=ai, metadata={"caller": None}),  # 14
            message(run_id="r6", event_type=ai, metadata={"caller": "middleware:x", "task_id": "k"}),  # 15
            message(run_id="r1", event_type="tool.result"),  # 16
        ]
    )
    every_run = ["r1", "r2", "r3", "r4", "r5", "r6", "nope"]
    assert await store.get_last_visible_ai_seq_by_run("t1", every_run) == {"r1": 2, "r2": 7, "r6": 14}
    assert await store.get_last_visible_ai_seq_by_run("t1", ("r2",)) == {"r2": 7}
    assert await store.get_last_visible_ai_seq_by_run("t1", {"r1", "r3"}) == {"r1": 2}
    assert await store.get_last_visible_ai_seq_by_run("t1", []) == {}
    assert await store.get_last_visible_ai_seq_by_run("nope", ["r1"]) == {}
    assert await store.get_last_visible_ai_seq_by_run("t2", ["r1"]) == {}


async def test_last_visible_ai_seq_follows_new_writes(store: RunEventStore) -> None:
    await store.put(**message(event_type="llm.ai.response"))
    assert await store.get_last_visible_ai_seq_by_run("t1", ["r1"]) == {"r1": 1}
    await store.put(**message(event_type="llm.ai.response", metadata={"caller": "middleware:x"}))
    assert await store.get_last_visible_ai_seq_by_run("t1", ["r1"]) == {"r1": 1}
    await store.put(**message(event_type="ai_message"))
    assert await store.get_last_visible_ai_seq_by_run("t1", ["r1"]) == {"r1": 3}


async def test_last_visible_ai_seq_is_scoped_to_the_user(store: RunEventStore) -> None:
    ai = "llm.ai.response"
    await store.put_batch(
        [
            message(run_id="r1", event_type=ai, user_id="u1"),  # 1
            message(run_id="r1", event_type=ai, user_id="u2"),  # 2
            message(run_id="r1", event_type=ai),  # 3: no user
            message(run_id="r2", event_type=ai, user_id="u2"),  # 4
            message(run_id="r2", event_type=ai, user_id="u1", metadata={"caller": "middleware:m"}),  # 5
        ]
    )
    runs = ["r1", "r2"]
    assert await store.get_last_visible_ai_seq_by_run("t1", runs) == {"r1": 3, "r2": 4}
    assert await store.get_last_visible_ai_seq_by_run("t1", runs, user_id=None) == {"r1": 3, "r2": 4}
    assert await store.get_last_visible_ai_seq_by_run("t1", runs, user_id="u1") == {"r1": 1}
    assert await store.get_last_visible_ai_seq_by_run("t1", runs, user_id="u2") == {"r1": 2, "r2": 4}
    assert await store.get_last_visible_ai_seq_by_run("t1", runs, user_id="nobody") == {}


# --- get_message_seqs ------------------------------------------------------------------------------


async def test_message_seqs_are_the_earliest_message_with_each_id(store: RunEventStore) -> None:
    await store.put_batch(
        [
            message(content="plain m1"),  # 1: str content has no id
            message(content={"type": "human", "id": "m1", "content": "hi"}),  # 2
            trace(content={"id": "m2"}),  # 3: not a message
            message(run_id="r2", content={"type": "ai", "id": "m1"}),  # 4: m1 again
            message(content={"type": "ai", "id": "m2"}),  # 5
            message(content=[{"id": "m3"}]),  # 6: a list is not a message dict
            event(category="lifecycle", content={"id": "m3"}),  # 7
            message(content={"id": 4, "type": "ai"}),  # 8: not a string id
            message(content={"type": "ai", "message_id": "m5"}),  # 9: no "id" key
            message(run_id="r3", content={"id": "m3"}),  # 10
            message(content={"id": "m2"}),  # 11
        ]
    )
    wanted = ["m1", "m2", "m3", "m4", "m5", "unknown"]
    assert await store.get_message_seqs("t1", wanted) == {"m1": 2, "m2": 5, "m3": 10}
    assert await store.get_message_seqs("t1", {"m2"}) == {"m2": 5}
    assert await store.get_message_seqs("t1", ("m3", "m1")) == {"m3": 10, "m1": 2}
    assert await store.get_message_seqs("t1", []) == {}
    assert await store.get_message_seqs("t1", ["unknown"]) == {}
    assert await store.get_message_seqs("nope", ["m1"]) == {}


async def test_message_seqs_are_scoped_to_the_user(store: RunEventStore) -> None:
    await store.put_batch(
        [
            message(content={"id": "m1"}),  # 1: no user
            message(content={"id": "m1"}, user_id="u2"),  # 2
            message(content={"id": "m1"}, user_id="u1"),  # 3
            message(content={"id": "m2"}, user_id="u1"),  # 4
            message(content={"id": "m2"}, user_id="u2"),  # 5
            trace(content={"id": "m3"}, user_id="u1"),  # 6
        ]
    )
    wanted = ["m1", "m2", "m3"]
    assert await store.get_message_seqs("t1", wanted) == {"m1": 1, "m2": 4}
    assert await store.get_message_seqs("t1", wanted, user_id=None) == {"m1": 1, "m2": 4}
    assert await store.get_message_seqs("t1", wanted, user_id="u1") == {"m1": 3, "m2": 4}
    assert await store.get_message_seqs("t1", wanted, user_id="u2") == {"m1": 2, "m2": 5}
    assert await store.get_message_seqs("t1", wanted, user_id="nobody") == {}


# --- count_messages --------------------------------------------------------------------------------


async def test_count_messages_counts_only_messages(store: RunEventStore) -> None:
    written = await write_events_layout(store)
    assert sum(1 for r in written.values() if r["category"] == "message") == 4
    assert await store.count_messages("t1") == 4
    assert await store.count_messages("t1", user_id=None) == 4
    assert await store.count_messages("t1", user_id="u1") == 2
    assert await store.count_messages("t1", user_id="u2") == 2
    assert await store.count_messages("t1", user_id="nobody") == 0
    assert await store.count_messages("t2") == 1
    assert await store.count_messages("nope") == 0
    assert await store.count_messages("nope", user_id="u1") == 0


async def test_count_messages_follows_every_kind_of_write(store: RunEventStore) -> None:
    assert await store.count_messages("t1") == 0
    await store.put(**message())
    await store.put(**trace())
    assert await store.count_messages("t1") == 1
    await store.put_batch([message(), message(thread_id="t2"), trace(), message(user_id="u1")])
    assert await store.count_messages("t1") == 3
    assert await store.count_messages("t1", user_id="u1") == 1
    await store.put_if_absent(**message(event_type="run.end"))
    await store.put_if_absent(**message(event_type="run.end"))
    assert await store.count_messages("t1") == 4
    assert await store.count_messages("t2") == 1
