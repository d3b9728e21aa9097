"""The argument rule (store/arguments.py): a read or delete no backend can answer fails alike on all.

Every case runs on every backend: the error is `InvalidQueryError` naming the argument, never a
driver's error, a `TypeError`, an `OSError` or an answer that hides the slip, and a delete given a
missing argument removes nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from runevents.errors import InvalidEventError, InvalidQueryError
from runevents.store import RunEventStore
from runevents.store.arguments import MAX_ITEMS, MAX_LIMIT
from tests.conformance.builders import EVERYTHING, message, run_records, seqs, trace


@dataclass(frozen=True)
class Case:
    """One call of a store method with one bad argument, and the argument its error must name."""

    name: str
    argument: str
    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)

    def call(self, store: RunEventStore) -> Awaitable[Any]:
        """The call, made on `store`."""
        method: Callable[..., Awaitable[Any]] = getattr(store, self.method)
        return method(*self.args, **self.kwargs)


# Arguments that are not ids: None, other types, empty, too long, with forbidden characters.
NOT_IDS: list[Any] = [None, 7, 1.5, True, b"t1", ["t1"], "", "x" * 65, "t\x00", "t\n", "t\ud800"]
NOT_INTS: list[Any] = [None, "5", 5.0, True, [5]]
ABSURD: list[int] = [-1, 2**63, 2**64, -(2**63)]


def _id_cases() -> list[Case]:
    """Every id argument of every read and delete, given each kind of non-id."""
    cases: list[Case] = []
    for bad in NOT_IDS:
        label = repr(bad)[:12]
        calls: list[tuple[str, str, tuple[Any, ...], dict[str, Any]]] = [
            ("thread_id", "list_messages", (bad,), {}),
            ("user_id", "list_messages", ("t1",), {"user_id": bad}),
            ("thread_id", "list_events", (bad, "r1"), {}),
            ("run_id", "list_events", ("t1", bad), {}),
            ("user_id", "list_events", ("t1", "r1"), {"user_id": bad}),
            ("thread_id", "list_messages_by_run", (bad, "r1"), {}),
            ("run_id", "list_messages_by_run", ("t1", bad), {}),
            ("user_id", "list_messages_by_run", ("t1", "r1"), {"user_id": bad}),
            ("thread_id", "get_last_visible_ai_seq_by_run", (bad, ["r1"]), {}),
            ("run_ids[1]", "get_last_visible_ai_seq_by_run", ("t1", ["r1", bad]), {}),
            ("thread_id", "get_message_seqs", (bad, ["m1"]), {}),
            ("user_id", "get_message_seqs", ("t1", ["m1"]), {"user_id": bad}),
            ("thread_id", "count_messages", (bad,), {}),
            ("user_id", "count_messages", ("t1",), {"user_id": bad}),
            ("thread_id", "delete_by_thread", (bad,), {}),
            ("thread_id", "delete_by_run", (bad, "r1"), {}),
            ("run_id", "delete_by_run", ("t1", bad), {}),
        ]
        for argument, method, args, kwargs in calls:
            if bad is None and argument == "user_id":
                continue  # None is "every user"
            cases.append(Case(f"{method}-{argument}-{label}", argument, method, args, kwargs))
    return cases


def _page_cases() -> list[Case]:
    cases: list[Case] = []
    for bad in [*NOT_INTS, *ABSURD, MAX_LIMIT + 1]:
        label = repr(bad)[:12]
        cases += [
            Case(f"messages-limit-{label}", "limit", "list_messages", ("t1",), {"limit": bad}),
            Case(f"events-limit-{label}", "limit", "list_events", ("t1", "r1"), {"limit": bad}),
            Case(f"by_run-limit-{label}", "limit", "list_messages_by_run", ("t1", "r1"), {"limit": bad}),
        ]
    for bad in [*NOT_INTS[1:], *ABSURD]:
        label = repr(bad)[:12]
        cases += [
            Case(f"messages-before-{label}", "before_seq", "list_messages", ("t1",), {"before_seq": bad}),
            Case(f"messages-after-{label}", "after_seq", "list_messages", ("t1",), {"after_seq": bad}),
            Case(f"events-after-{label}", "after_seq", "list_events", ("t1", "r1"), {"after_seq": bad}),
            Case(
                f"by_run-before-{label}",
                "before_seq",
                "list_messages_by_run",
                ("t1", "r1"),
                {"before_seq": bad},
            ),
            Case(
                f"by_run-after-{label}", "after_seq", "list_messages_by_run", ("t1", "r1"), {"after_seq": bad}
            ),
        ]
    return cases


def _collection_cases() -> list[Case]:
    many = [f"r{i}" for i in range(MAX_ITEMS + 1)]
    last_ai, seqs_of, events = "get_last_visible_ai_seq_by_run", "get_message_seqs", "list_events"
    return [
        Case("run_ids-none", "run_ids", last_ai, ("t1", None)),
        Case("run_ids-str", "run_ids", last_ai, ("t1", "r1")),
        Case("run_ids-int", "run_ids", last_ai, ("t1", 5)),
        Case("run_ids-too-many", "run_ids", last_ai, ("t1", many)),
        Case("identities-none", "identities", seqs_of, ("t1", None)),
        Case("identities-str", "identities", seqs_of, ("t1", "m1")),
        Case("identities-int", "identities[0]", seqs_of, ("t1", [1])),
        Case("identities-nul", "identities[1]", seqs_of, ("t1", ["m", "m\x00"])),
        Case("identities-513", "identities[0]", seqs_of, ("t1", ["m" * 513])),
        Case("identities-too-many", "identities", seqs_of, ("t1", many)),
        Case("types-str", "event_types", events, ("t1", "r1"), {"event_types": "a"}),
        Case("types-none", "event_types[0]", events, ("t1", "r1"), {"event_types": [None]}),
        Case("types-bytes", "event_types[0]", events, ("t1", "r1"), {"event_types": [b"a"]}),
        Case("task_id-int", "task_id", events, ("t1", "r1"), {"task_id": 5}),
        Case("task_id-nul", "task_id", events, ("t1", "r1"), {"task_id": "t\x00"}),
    ]


CASES: list[Case] = _id_cases() + _page_cases() + _collection_cases()


async def test_a_bad_argument_is_an_invalid_query_naming_it(store: RunEventStore) -> None:
    # One store and one loop rather than a test per case: the cases are hundreds, the backends five.
    written = await store.put_batch([message(), trace(), message(run_id="r2")])
    wrong: list[str] = []
    for case in CASES:
        try:
            await case.call(store)
        except InvalidQueryError as caught:
            if caught.argument != case.argument or not str(caught).startswith(f"{case.argument}: "):
                wrong.append(f"{case.name}: named {caught.argument!r}: {caught}")
        except Exception as caught:  # what else a backend raised is the finding
            wrong.append(f"{case.name}: {type(caught).__name__}: {caught}")
        else:
            wrong.append(f"{case.name}: no error")
    assert wrong == []
    assert len(CASES) > 200
    # Nothing was removed by a refused delete.
    assert await run_records(store, "t1", "r1") == written[:2]
    assert await run_records(store, "t1", "r2") == written[2:]


async def test_delete_by_run_of_none_deletes_nothing(store: RunEventStore) -> None:
    # The trial's reproduction: on sql, a None run id read as "every run" and emptied the thread.
    written = await store.put_batch([message(run_id=run) for run in ("r1", "r2", "r3")])
    with pytest.raises(InvalidQueryError, match="run_id"):
        await store.delete_by_run("t1", None)  # type: ignore[arg-type]
    assert await store.count_messages("t1") == 3
    assert seqs(await store.list_messages("t1", limit=EVERYTHING)) == [r["seq"] for r in written]


async def test_the_largest_arguments_are_taken(store: RunEventStore) -> None:
    await store.put_batch([message(content={"id": "m" * 512}), message()])
    assert seqs(await store.list_messages("t1", limit=MAX_LIMIT, after_seq=0)) == [1, 2]
    assert await store.list_messages("t1", before_seq=2**63 - 1, limit=1) == await store.list_messages(
        "t1", limit=1
    )
    assert await store.list_events("t1", "r1", after_seq=2**63 - 1) == []
    assert await store.get_message_seqs("t1", ["m" * 512]) == {"m" * 512: 1}
    many = [f"r{i}" for i in range(MAX_ITEMS)]
    assert await store.get_last_visible_ai_seq_by_run("t1", many) == {"r1": 2}
    assert await store.get_last_visible_ai_seq_by_run("t1", {"r1", "r9"}) == {"r1": 2}


# --- fields that become columns: PostgreSQL text cannot hold NUL, so no backend takes it ----------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        pytest.param({"content": {"id": "m\x00id", "content": "hi"}}, "content.id", id="message_id"),
        pytest.param({"metadata": {"task_id": "task\x00"}}, "metadata.task_id", id="task_id"),
        pytest.param({"metadata": {"caller": "mid\x00dleware:x"}}, "metadata.caller", id="caller"),
    ],
)
async def test_nul_in_a_column_field_is_refused(
    store: RunEventStore, fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidEventError) as caught:
        await store.put(**message(**fields))
    assert caught.value.field == field
    with pytest.raises(InvalidEventError) as in_batch:
        await store.put_batch([message(), message(**fields)])
    assert (in_batch.value.field, in_batch.value.index) == (field, 1)
    with pytest.raises(InvalidEventError):
        await store.put_if_absent(**message(**fields))
    assert await store.count_messages("t1") == 0


async def test_nul_elsewhere_in_content_and_metadata_comes_back(store: RunEventStore) -> None:
    # Only the fields that become columns are refused: content and other metadata are JSON, which holds NUL.
    content = {"id": "m1", "text": "a\x00b"}
    written = await store.put(**message(content=content, metadata={"note": "c\x00d", "caller": "user"}))
    assert written["content"] == content
    assert await store.list_messages("t1") == [written]
    assert await store.get_message_seqs("t1", ["m1"]) == {"m1": 1}
