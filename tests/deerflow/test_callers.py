"""deer-flow's callers, as they call the store (from its RunJournal, subagent buffer, delivery receipts,
workspace changes and thread routes), on each backend a deer-flow configuration can name."""

from __future__ import annotations

import importlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from runevents.bus.projector import Projector
from runevents.bus.topic import create_topic
from runevents.deerflow import DeerFlowRunEventStore, make_run_event_store
from runevents.tables.migrate import upgrade_async
from tests.bus.conftest import running
from tests.deerflow.conftest import as_user

THREAD = "thread-1"
RUN = "run-1"


@pytest.fixture(params=["memory", "jsonl", "db", "bus"])
async def store(
    request: pytest.FixtureRequest, deerflow: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[DeerFlowRunEventStore]:
    """The store `make_run_event_store` builds for deer-flow's config of each backend."""
    monkeypatch.chdir(tmp_path)
    engine = importlib.import_module("deerflow.persistence.engine")
    if request.param == "db":
        url = f"sqlite+aiosqlite:///{tmp_path / 'deerflow.db'}"
        await engine.init_engine("sqlite", url=url, sqlite_dir=str(tmp_path))
    if request.param != "bus":
        built = make_run_event_store({"backend": request.param})
        yield built
        await built.close()
        await engine.close_engine()
        return
    kafka: str = request.getfixturevalue("kafka_bootstrap")
    server = make_url(request.getfixturevalue("postgres_url"))
    name = f"deerflow_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server.set(drivername="postgresql").render_as_string(hide_password=False))
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    finally:
        await admin.close()
    database = server.set(database=name).render_as_string(hide_password=False)
    await upgrade_async(database)
    topic = f"deerflow-{uuid.uuid4().hex[:12]}"
    assert await create_topic(kafka, topic, partitions=2)
    # deer-flow's config keeps `backend: db` (its gateway insists on it); the environment moves it to the bus.
    monkeypatch.setenv("RUNEVENTS_DEERFLOW_BACKEND", "bus")
    monkeypatch.setenv("RUNEVENTS_KAFKA", kafka)
    monkeypatch.setenv("RUNEVENTS_DATABASE_URL", database)
    monkeypatch.setenv("RUNEVENTS_TOPIC", topic)
    async with running(Projector(kafka, database, topic=topic, partitions=range(2))):
        built = make_run_event_store({"backend": "db"})
        yield built
        await built.close()


def journal_event(event_type: str, category: str, content: Any = "", **metadata: Any) -> dict[str, Any]:
    """An event as deer-flow's RunJournal buffers it: no user_id, created_at now in UTC."""
    return {
        "thread_id": THREAD,
        "run_id": RUN,
        "event_type": event_type,
        "category": category,
        "content": content,
        "metadata": metadata,
        "created_at": datetime.now(UTC).isoformat(),
    }


def ai(text: str, caller: str = "lead_agent") -> dict[str, Any]:
    """An `llm.ai.response` as the journal writes it: the message dump, usage in metadata."""
    usage = {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}
    message = {"type": "ai", "content": text, "id": f"ai-{text}", "usage_metadata": usage}
    return journal_event("llm.ai.response", "message", message, caller=caller, usage=usage, llm_call_index=0)


async def test_a_run_as_deerflow_writes_and_reads_it(
    store: DeerFlowRunEventStore, deerflow: ModuleType
) -> None:
    with as_user(deerflow, "alice"):
        # RunJournal: put_batch of its buffer, its return value unused.
        await store.put_batch(
            [
                journal_event("run.start", "trace", {"chain": "lead_agent"}, caller="lead_agent"),
                journal_event("llm.human.input", "message", {"type": "human", "content": "hi", "id": "h1"}),
                ai("hello"),
                ai("a title", caller="middleware:title"),
            ]
        )
        # The subagent buffer flushes its steps with put_batch.
        steps = [journal_event("subagent.step", "subagent", {"step": n}, task_id="task-7") for n in range(3)]
        await store.put_batch(steps)
        # Workspace changes: one put, read back by type, the last one's metadata used.
        await store.put(
            thread_id=THREAD,
            run_id=RUN,
            event_type="workspace_changes",
            category="workspace",
            content="2 files changed +3 -1",
            metadata={"workspace_changes": {"files": 2}},
        )
        # The delivery receipt, retried: written once.
        receipt = {"presented": 1, "paths": ["/out/a.md"], "by_tool": {}}
        first = await store.put_if_absent(
            thread_id=THREAD, run_id=RUN, event_type="run.delivery", category="outputs", content=receipt
        )
        second = await store.put_if_absent(
            thread_id=THREAD, run_id=RUN, event_type="run.delivery", category="outputs", content=receipt
        )
        assert (first[1], second[1]) == (True, False)
        assert second[0]["seq"] == first[0]["seq"]

        # The thread routes and history, as deer-flow's gateway reads them.
        history = await store.list_messages(THREAD, limit=1000)
        assert [m["content"]["content"] for m in history] == ["hi", "hello", "a title"]
        assert all(isinstance(m["content"], dict) for m in history)
        by_run = await store.list_messages_by_run(THREAD, RUN, limit=51)
        assert [m["seq"] for m in by_run] == [m["seq"] for m in history]
        changes = await store.list_events(THREAD, RUN, event_types=["workspace_changes"], limit=10)
        assert changes[-1]["metadata"]["workspace_changes"] == {"files": 2}
        task = await store.list_events(THREAD, RUN, task_id="task-7")
        assert [e["content"]["step"] for e in task] == [0, 1, 2]
        visible = await store.get_last_visible_ai_seq_by_run(THREAD, {RUN})
        assert visible == {RUN: history[1]["seq"]}  # the title came from middleware: not visible
        assert await store.count_messages(THREAD) == 3
    # The checkpoint seed looks at the thread unscoped; another user sees nothing of it.
    assert len(await store.list_messages(THREAD, limit=1, user_id=None)) == 1
    with as_user(deerflow, "bob"):
        assert await store.list_messages(THREAD) == []
        assert await store.get_last_visible_ai_seq_by_run(THREAD, {RUN}) == {}
