"""deer-flow's DB markers (`content_is_json`, `content_is_dict`): on in the `db` flavour, off in
runevents' core, added on the way out and never stored."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from runevents.deerflow import DbRunEventStore, MemoryRunEventStore, with_markers
from runevents.deerflow.classes import SQLITE_FILE_NAME
from runevents.tables.sql import SqlRunEventStore
from tests.deerflow.conftest import as_user

CASES: list[tuple[Any, dict[str, bool]]] = [
    ({"type": "ai", "content": "hi"}, {"content_is_json": True, "content_is_dict": True}),
    ([1, 2], {"content_is_json": True}),
    (7, {"content_is_json": True}),
    (None, {"content_is_json": True}),
    ("plain text", {}),
]


def event(event_type: str, category: str, content: Any) -> dict[str, Any]:
    """An event of thread t1, run r1."""
    return {
        "thread_id": "t1",
        "run_id": "r1",
        "event_type": event_type,
        "category": category,
        "content": content,
    }


@pytest.mark.parametrize(("content", "markers"), CASES)
def test_markers_follow_deerflows_rule(content: Any, markers: dict[str, bool]) -> None:
    record: Any = {"content": content, "metadata": {"caller": "lead_agent"}}
    assert with_markers(record)["metadata"] == {"caller": "lead_agent", **markers}
    assert record["metadata"] == {"caller": "lead_agent"}  # the record given is left as it was


async def test_the_db_flavour_marks_what_it_returns_and_stores_none(
    deerflow: ModuleType, tmp_path: Path
) -> None:
    engine = importlib.import_module("deerflow.persistence.engine")
    await engine.init_engine("sqlite", url=f"sqlite+aiosqlite:///{tmp_path / 'deerflow.db'}")
    store = DbRunEventStore(engine.get_session_factory(), max_trace_content=100)
    try:
        with as_user(deerflow, "alice"):
            put = await store.put(
                thread_id="t1",
                run_id="r1",
                event_type="llm.ai.response",
                category="message",
                content={"a": 1},
            )
            batch = await store.put_batch(
                [
                    {
                        "thread_id": "t1",
                        "run_id": "r1",
                        "event_type": "x",
                        "category": "message",
                        "content": [1],
                    },
                    {
                        "thread_id": "t1",
                        "run_id": "r1",
                        "event_type": "y",
                        "category": "message",
                        "content": "s",
                    },
                    # A trace over max_trace_content is cut to a str: truncated, and no JSON marker.
                    {
                        "thread_id": "t1",
                        "run_id": "r1",
                        "event_type": "z",
                        "category": "trace",
                        "content": {"k": "v" * 500},
                    },
                ]
            )
            listed = await store.list_events("t1", "r1")
        assert put["metadata"] == {"content_is_json": True, "content_is_dict": True}
        assert [r["metadata"] for r in batch[:2]] == [{"content_is_json": True}, {}]
        assert batch[2]["metadata"]["content_truncated"] is True
        assert "content_is_json" not in batch[2]["metadata"]
        assert len(batch[2]["content"].encode()) == 100
        assert [r["metadata"] for r in listed] == [r["metadata"] for r in [put, *batch]]
        # What is stored is runevents' record: a plain sql store on the same tables sees no markers.
        async with SqlRunEventStore(f"sqlite+aiosqlite:///{tmp_path / SQLITE_FILE_NAME}") as plain:
            stored = await plain.list_events("t1", "r1")
        assert [r["metadata"] for r in stored[:3]] == [{}, {}, {}]
        assert stored[0]["content"] == {"a": 1}
    finally:
        await store.close()
        await engine.close_engine()


async def test_the_switch_turns_markers_off_in_db_and_on_elsewhere(
    deerflow: ModuleType, tmp_path: Path
) -> None:
    engine = importlib.import_module("deerflow.persistence.engine")
    await engine.init_engine("sqlite", url=f"sqlite+aiosqlite:///{tmp_path / 'deerflow.db'}")
    dict_event = event("x", "message", {"a": 1})
    try:
        async with DbRunEventStore(engine.get_session_factory(), content_markers=False) as db:
            assert (await db.put_batch([dict_event]))[0]["metadata"] == {}
        async with MemoryRunEventStore() as memory:
            assert (await memory.put_batch([dict_event]))[0]["metadata"] == {}
        async with MemoryRunEventStore(content_markers=True) as marked:
            await marked.put_batch([dict_event])
            (read,) = await marked.list_messages("t1", user_id=None)
            assert read["metadata"] == {"content_is_json": True, "content_is_dict": True}
    finally:
        await engine.close_engine()
