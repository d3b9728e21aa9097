"""deer-flow's user scoping through the drop-in: a current user set, none set, and `user_id=None`.

deer-flow's DB store decides (its memory and JSONL stores ignore users): reads default to the current
user and refuse without one; `user_id=None` reads every user; writes record the current user.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import pytest

from runevents.deerflow import (
    AUTO,
    DbRunEventStore,
    DeerFlowRunEventStore,
    JsonlRunEventStore,
    MemoryRunEventStore,
)
from tests.deerflow.conftest import as_user, message

FLAVOURS = ["memory", "jsonl", "db"]


@pytest.fixture(params=FLAVOURS)
async def store(
    request: pytest.FixtureRequest, deerflow: ModuleType, tmp_path: Path
) -> AsyncIterator[DeerFlowRunEventStore]:
    """A drop-in store of each flavour, built as deer-flow builds its own."""
    engine = importlib.import_module("deerflow.persistence.engine")
    built: DeerFlowRunEventStore
    if request.param == "memory":
        built = MemoryRunEventStore()
    elif request.param == "jsonl":
        built = JsonlRunEventStore(base_dir=str(tmp_path / "events"))
    else:
        url = f"sqlite+aiosqlite:///{tmp_path / 'deerflow.db'}"
        await engine.init_engine("sqlite", url=url, sqlite_dir=str(tmp_path))
        built = DbRunEventStore(engine.get_session_factory())
    yield built
    await built.close()
    await engine.close_engine()


async def test_reads_default_to_the_current_user(store: DeerFlowRunEventStore, deerflow: ModuleType) -> None:
    with as_user(deerflow, "alice"):
        await store.put_batch([message("t1", "r1", "a1"), message("t1", "r1", "a2")])
    with as_user(deerflow, "bob"):
        await store.put_batch([message("t1", "r2", "b1")])
        mine = await store.list_messages("t1")
        assert [record["content"]["content"] for record in mine] == ["b1"]
        assert await store.count_messages("t1") == 1
        assert [r["seq"] for r in await store.list_events("t1", "r1")] == []  # alice's run: not bob's
    with as_user(deerflow, "alice"):
        assert [r["content"]["content"] for r in await store.list_messages("t1")] == ["a1", "a2"]
        assert [r["user_id"] for r in await store.list_messages_by_run("t1", "r1")] == ["alice", "alice"]


async def test_user_id_none_reads_every_user_and_a_str_reads_that_user(
    store: DeerFlowRunEventStore, deerflow: ModuleType
) -> None:
    with as_user(deerflow, "alice"):
        await store.put_batch([message("t1", "r1", "a1")])
    with as_user(deerflow, "bob"):
        await store.put_batch([message("t1", "r2", "b1")])
    # No user set: explicit arguments work as given.
    assert [r["user_id"] for r in await store.list_messages("t1", user_id=None)] == ["alice", "bob"]
    assert [r["user_id"] for r in await store.list_messages("t1", user_id="alice")] == ["alice"]
    assert await store.count_messages("t1", user_id=None) == 2
    # deer-flow's own AUTO sentinel means the current user, as ours does.
    with as_user(deerflow, "alice"):
        assert len(await store.list_messages("t1", user_id=deerflow.AUTO)) == 1
        assert len(await store.list_messages("t1", user_id=AUTO)) == 1


async def test_a_read_with_no_user_set_is_refused_as_deerflow_refuses_it(
    store: DeerFlowRunEventStore, deerflow: ModuleType
) -> None:
    for read in (
        store.list_messages("t1"),
        store.count_messages("t1"),
        store.list_events("t1", "r1"),
        store.list_messages_by_run("t1", "r1"),
        store.get_last_visible_ai_seq_by_run("t1", {"r1"}),
    ):
        with pytest.raises(RuntimeError, match="no user context is set"):
            await read
    with pytest.raises(RuntimeError, match="no user context is set"):
        store.subscribe("t1")


async def test_writes_record_the_current_user_and_none_without_one(
    store: DeerFlowRunEventStore, deerflow: ModuleType
) -> None:
    with as_user(deerflow, "alice"):
        written = await store.put(thread_id="t1", run_id="r1", event_type="run.start", category="trace")
        named = await store.put_batch([message("t1", "r1", "x", user_id="carol")])
        receipt, created = await store.put_if_absent(
            thread_id="t1",
            run_id="r1",
            event_type="run.delivery",
            category="outputs",
            content={"presented": 0},
        )
    anonymous = await store.put(thread_id="t1", run_id="r1", event_type="run.end", category="outputs")
    assert written["user_id"] == "alice"
    assert named[0]["user_id"] == "carol"  # an event that names its user keeps it (deer-flow's DB store)
    assert (receipt["user_id"], created) == ("alice", True)
    assert anonymous["user_id"] is None
    # A record written with no user is invisible to a user's reads, visible with user_id=None.
    with as_user(deerflow, "alice"):
        alices = await store.list_events("t1", "r1")
        assert [r["event_type"] for r in alices] == ["run.start", "run.delivery"]
    everything = await store.list_events("t1", "r1", user_id=None)
    assert [r["event_type"] for r in everything] == [
        "run.start",
        "llm.human.input",
        "run.delivery",
        "run.end",
    ]


async def test_a_users_delete_removes_only_what_that_user_can_see(
    store: DeerFlowRunEventStore, deerflow: ModuleType
) -> None:
    with as_user(deerflow, "alice"):
        await store.put_batch([message("ta", "r1", "a1"), message("ta", "r2", "a2")])
    with as_user(deerflow, "bob"):
        await store.put_batch([message("tb", "r1", "b1")])
        assert await store.delete_by_thread("ta") == 0  # not bob's: nothing said, nothing removed
        assert await store.delete_by_run("ta", "r1") == 0
        assert await store.delete_by_thread("tb") == 1
    with as_user(deerflow, "alice"):
        assert await store.delete_by_run("ta", "r1") == 1
        assert await store.count_messages("ta") == 1
    assert await store.delete_by_thread("ta", user_id=None) == 1


async def test_subscribe_follows_the_current_users_records(
    store: DeerFlowRunEventStore, deerflow: ModuleType
) -> None:
    with as_user(deerflow, "alice"):
        await store.put_batch([message("t1", "r1", "a1")])
    with as_user(deerflow, "bob"):
        await store.put_batch([message("t1", "r1", "b1")])
    with as_user(deerflow, "alice"):
        await store.put_batch([message("t1", "r1", "a2")])
        followed = store.subscribe("t1")
        try:
            seen = [await anext(followed), await anext(followed)]
        finally:
            await followed.aclose()
    assert [(r["seq"], r["user_id"]) for r in seen] == [(1, "alice"), (3, "alice")]


async def test_without_deerflow_reads_take_every_user_and_writes_record_none(
    no_deerflow: None, tmp_path: Path
) -> None:
    async with MemoryRunEventStore() as store:
        await store.put_batch([message("t1", "r1", "a1", user_id="alice"), message("t1", "r1", "x")])
        assert [r["user_id"] for r in await store.list_messages("t1")] == ["alice", None]
        assert [r["user_id"] for r in await store.list_messages("t1", user_id="alice")] == ["alice"]
        assert await store.count_messages("t1") == 2
