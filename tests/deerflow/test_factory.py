"""`make_run_event_store(config)`: deer-flow's configuration shapes, each backend, and its errors."""

from __future__ import annotations

import asyncio
import importlib
import logging
import subprocess
import sys
import uuid
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any, Literal

import asyncpg
import pytest
from pydantic import BaseModel, ConfigDict
from sqlalchemy.engine import make_url

from runevents.bus.projector import Projector
from runevents.bus.topic import create_topic
from runevents.deerflow import (
    ConfigError,
    DbRunEventStore,
    DeerFlowRunEventStore,
    JsonlRunEventStore,
    MemoryRunEventStore,
    make_run_event_store,
)
from runevents.errors import SchemaOutdatedError
from runevents.store import JsonlRunEventStore as PlainJsonl
from runevents.tables.migrate import upgrade_async
from tests.bus.conftest import running
from tests.deerflow.conftest import as_user, message


class DeerFlowRunEventsConfig(BaseModel):
    """deer-flow's own `RunEventsConfig`, as its config module declares it (unknown keys dropped)."""

    model_config = ConfigDict(extra="ignore")

    backend: Literal["memory", "db", "jsonl"] = "memory"
    max_trace_content: int = 10240
    track_token_usage: bool = True


@pytest.mark.parametrize(
    "config", [None, SimpleNamespace(backend="memory"), DeerFlowRunEventsConfig(), {"backend": "memory"}]
)
async def test_memory_from_every_shape_deerflow_passes(config: Any, no_deerflow: None) -> None:
    store = make_run_event_store(config)
    assert isinstance(store, MemoryRunEventStore)
    await store.put_batch([message("t1", "r1", "x")])
    assert len(await store.list_messages("t1")) == 1


async def test_jsonl_opens_deerflows_directory_in_place(
    no_deerflow: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # deer-flow's jsonl store has no directory setting: ./.deer-flow
    async with PlainJsonl(tmp_path / ".deer-flow") as earlier:
        await earlier.put_batch([message("t1", "r1", "before")])
    async with make_run_event_store(DeerFlowRunEventsConfig(backend="jsonl")) as store:
        assert isinstance(store, JsonlRunEventStore)
        await store.put_batch([message("t1", "r1", "after")])
        assert [r["seq"] for r in await store.list_messages("t1")] == [1, 2]
    async with make_run_event_store({"backend": "jsonl", "jsonl_dir": str(tmp_path / "elsewhere")}) as other:
        assert await other.count_messages("t1") == 0


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"backend": "redis"}, "run_events.backend"),
        ({"backend": "memory", "bakend": "db"}, "run_events.bakend"),
        ({"backend": "bus", "bus": {"brokers": "b:9092", "topik": "x"}}, "run_events.bus.topik"),
        ({"max_trace_content": 0}, "run_events.max_trace_content"),
        ({"backend": "url"}, "run_events.url"),
    ],
)
def test_a_wrong_config_names_the_key(config: dict[str, Any], named: str, no_deerflow: None) -> None:
    with pytest.raises(ConfigError, match=named):
        make_run_event_store(config)


def test_the_environment_switches_the_store_without_touching_deerflows_config(
    no_deerflow: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNEVENTS_DEERFLOW_URL", f"jsonl://{tmp_path / 'events'}")
    store = make_run_event_store(DeerFlowRunEventsConfig(backend="memory"))
    assert isinstance(store.store, PlainJsonl)
    monkeypatch.setenv("RUNEVENTS_DEERFLOW_BACKEND", "nosuch")
    with pytest.raises(ConfigError, match=r"run_events\.backend"):
        make_run_event_store(None)


def test_db_outside_deerflow_says_what_to_use(no_deerflow: None) -> None:
    with pytest.raises(ConfigError, match=r"deerflow\.persistence\.engine is not importable"):
        make_run_event_store({"backend": "db"})


async def test_db_without_a_database_falls_back_to_memory_and_says_so(
    deerflow: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    engine = importlib.import_module("deerflow.persistence.engine")
    await engine.init_engine("memory")
    with caplog.at_level(logging.WARNING, logger="runevents.deerflow"):
        store = make_run_event_store(DeerFlowRunEventsConfig(backend="db"))
    assert isinstance(store, MemoryRunEventStore)
    assert "no database" in caplog.text


async def test_db_on_sqlite_lives_beside_deerflows_own_tables(deerflow: ModuleType, tmp_path: Path) -> None:
    engine = importlib.import_module("deerflow.persistence.engine")
    await engine.init_engine(
        "sqlite", url=f"sqlite+aiosqlite:///{tmp_path / 'deerflow.db'}", sqlite_dir=str(tmp_path)
    )
    try:
        store = make_run_event_store(DeerFlowRunEventsConfig(backend="db"))
        assert isinstance(store, DbRunEventStore)
        with as_user(deerflow, "alice"):
            (record,) = await store.put_batch([message("t1", "r1", "x")])  # migrates on first use
            assert record["metadata"]["content_is_json"] is True
            assert await store.count_messages("t1") == 1
        await store.close()
        assert (tmp_path / "runevents.db").is_file()
    finally:
        await engine.close_engine()


async def postgres_deerflow(engine: ModuleType, database: str) -> None:
    """deer-flow's engine on `database`, its own run_events table created in public."""
    await engine.init_engine("postgres", url=database)


async def test_db_on_postgresql_takes_a_schema_of_its_own(deerflow: ModuleType, pg_database: str) -> None:
    engine = importlib.import_module("deerflow.persistence.engine")
    await postgres_deerflow(engine, pg_database)
    try:
        async with make_run_event_store({"backend": "db"}) as store:
            with as_user(deerflow, "alice"):
                await store.put_batch([message("t1", "r1", "x"), message("t1", "r1", "y")])
                assert [r["seq"] for r in await store.list_messages("t1")] == [1, 2]
        connection = await asyncpg.connect(
            make_url(pg_database).set(drivername="postgresql").render_as_string(False)
        )
        try:
            ours = await connection.fetchval("SELECT count(*) FROM runevents.run_events")
            theirs = await connection.fetchval("SELECT count(*) FROM public.run_events")
        finally:
            await connection.close()
        assert (ours, theirs) == (2, 0)
    finally:
        await engine.close_engine()


async def test_db_that_must_not_migrate_refuses_with_the_command_to_run(
    deerflow: ModuleType, pg_database: str
) -> None:
    engine = importlib.import_module("deerflow.persistence.engine")
    await postgres_deerflow(engine, pg_database)
    try:
        async with make_run_event_store({"backend": "db", "migrate": False}) as store:
            with pytest.raises(SchemaOutdatedError, match=r"runevents db upgrade URL --schema runevents"):
                await store.count_messages("t1", user_id=None)
        await upgrade_async(pg_database, schema="runevents")
        async with make_run_event_store({"backend": "db", "migrate": False}) as store:
            assert await store.count_messages("t1", user_id=None) == 0
    finally:
        await engine.close_engine()


async def test_gateway_workers_starting_together_migrate_once(deerflow: ModuleType, pg_database: str) -> None:
    engine = importlib.import_module("deerflow.persistence.engine")
    await postgres_deerflow(engine, pg_database)
    stores = [DbRunEventStore(engine.get_session_factory()) for _ in range(4)]
    try:
        written = await asyncio.gather(
            *(store.put_batch([message(f"t{n}", "r1", "x", user_id="u")]) for n, store in enumerate(stores))
        )
        assert [batch[0]["seq"] for batch in written] == [1, 1, 1, 1]
    finally:
        for store in stores:
            await store.close()
        await engine.close_engine()


async def test_bus_publishes_and_reads_the_projection(
    no_deerflow: None, kafka_bootstrap: str, pg_database: str
) -> None:
    await upgrade_async(pg_database)
    topic = f"deerflow-{uuid.uuid4().hex[:12]}"
    assert await create_topic(kafka_bootstrap, topic, partitions=2)
    config = {"backend": "bus", "bus": {"brokers": kafka_bootstrap, "database": pg_database, "topic": topic}}
    async with running(Projector(kafka_bootstrap, pg_database, topic=topic, partitions=range(2))):
        store = make_run_event_store(config)
        assert isinstance(store, DeerFlowRunEventStore)
        try:
            await store.put_batch([message("t1", "r1", "x", user_id="alice"), message("t1", "r1", "y")])
            assert [r["seq"] for r in await store.list_messages("t1")] == [1, 2]
            assert [r["seq"] for r in await store.list_messages("t1", user_id="alice")] == [1]
        finally:
            await store.close()


async def test_upgrades_from_processes_starting_together_take_turns(pg_database: str) -> None:
    url = make_url(pg_database).set(drivername="postgresql").render_as_string(hide_password=False)
    command = [sys.executable, "-m", "runevents.cli", "db", "upgrade", url, "--schema", "runevents"]

    def upgrade() -> tuple[int, str]:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        return done.returncode, done.stdout + done.stderr

    results = await asyncio.gather(*(asyncio.to_thread(upgrade) for _ in range(3)))
    assert [code for code, _ in results] == [0, 0, 0], results


def test_a_misspelt_deerflow_variable_is_named_in_a_warning(
    no_deerflow: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("RUNEVENTS_DEERFLOW_BAKEND", "bus")
    with caplog.at_level(logging.WARNING, logger="runevents.deerflow"):
        store = make_run_event_store(None)
    assert isinstance(store, MemoryRunEventStore)  # the misspelt variable changed nothing
    assert "RUNEVENTS_DEERFLOW_BAKEND is not a runevents.deerflow variable" in caplog.text
