"""`runevents backfill` against a real broker and PostgreSQL, from each kind of source."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import select, text

from runevents.bus.projector import Projector
from runevents.bus.read_your_writes import ProjectionWatcher
from runevents.bus.topic import log_offsets
from runevents.events import Record, derived_event_id
from runevents.ops.backfill_sources import INPUT_FIELDS
from runevents.store import JsonlRunEventStore
from runevents.tables.migrate import upgrade_async
from runevents.tables.query import RECORD_COLUMNS, row_to_record
from runevents.tables.schema import run_events
from runevents.tables.sql import SqlRunEventStore, engine_for
from tests.bus.conftest import running
from tests.bus.test_projector import event, fetch
from tests.ops.test_dead_letters import cli

# What a record keeps through a backfill: everything but seq, which the projection numbers anew.
KEPT = ("event_id", *INPUT_FIELDS)


async def projected(kafka: str, url: str, topic: str) -> None:
    """Wait until the live projection has applied everything on the topic now."""
    ends = await log_offsets(kafka, topic, "end")
    watcher = ProjectionWatcher(url, projection="main", topic=topic, poll_interval_s=0.1)
    try:
        await watcher.wait({p: end - 1 for p, end in ends.items() if end}, timeout_s=60)
    finally:
        await watcher.close()


def kept(records: Sequence[Record]) -> list[dict[str, Any]]:
    """The fields a backfill keeps of each record."""
    return [{key: record[key] for key in KEPT} for record in records]


async def stored(url: str, threads: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Each thread's records in a runevents database (the read tables), in seq order."""
    engine = engine_for(url)
    try:
        async with engine.connect() as connection:
            found = {}
            for thread in threads:
                rows = await connection.execute(
                    select(*RECORD_COLUMNS).where(run_events.c.thread_id == thread).order_by(run_events.c.seq)
                )
                found[thread] = kept([row_to_record(row) for row in rows])
            return found
    finally:
        await engine.dispose()


def deerflow_line(thread: str, run: str, seq: int, content: Any, **extra: Any) -> bytes:
    """A line as deer-flow's JSONL store writes it: no event_id, no user_id."""
    record = {
        "thread_id": thread,
        "run_id": run,
        "event_type": "llm.ai.response",
        "category": "message",
        "content": content,
        "metadata": {"caller": "lead_agent"},
        "seq": seq,
        "created_at": f"2026-03-01T10:00:{seq:02d}+00:00",
        **extra,
    }
    return orjson.dumps(record) + b"\n"


async def test_a_jsonl_directory_is_imported_in_order_with_bad_lines_reported_and_twice_adds_nothing(
    kafka_bootstrap: str, bus_db: str, topic: str, make_projector: Callable[..., Projector], tmp_path: Path
):
    # A runevents JSONL store (event ids of its own) ...
    async with JsonlRunEventStore(tmp_path) as source:
        for thread in ("a", "b"):
            await source.put_batch([event(thread, n, run_id=f"r{n // 4}", user_id="u1") for n in range(10)])
        written = {
            thread: kept(
                sorted(
                    [r for run in ("r0", "r1", "r2") for r in await source.list_events(thread, run)],
                    key=lambda r: r["seq"],
                )
            )
            for thread in ("a", "b")
        }
    # ... and a thread written by deer-flow, its runs in two files, with lines that cannot be imported.
    runs = tmp_path / "threads" / "df" / "runs"
    runs.mkdir(parents=True)
    (runs / "run-2.jsonl").write_bytes(
        deerflow_line("df", "run-2", 3, {"content": "third"})
        + b"{not json\n"
        + deerflow_line("df", "run-2", 4, "fourth")
    )
    (runs / "run-1.jsonl").write_bytes(
        deerflow_line("df", "run-1", 1, "first")
        + deerflow_line("df", "run-1", 2, "second", category="")
        + deerflow_line("other", "run-1", 2, "misplaced")
    )
    args = ("backfill", str(tmp_path), "--database", bus_db, "--kafka", kafka_bootstrap, "--topic", topic)

    async with running(make_projector()):
        result = await cli(*args)
        assert result.exit_code == 2, result.output
        assert "read 26 of 26 records" in result.output
        assert "imported 23 onto" in result.output
        assert "skipped 0, rejected 3" in result.output
        assert "threads/df/runs/run-2.jsonl:2: not JSON" in result.output
        assert "threads/df/runs/run-1.jsonl:2: category:" in result.output
        assert "threads/df/runs/run-1.jsonl:3: thread_id 'other' in the directory of 'df'" in result.output
        await projected(kafka_bootstrap, bus_db, topic)
        imported = await stored(bus_db, ["a", "b", "df"])
        for thread in ("a", "b"):
            assert imported[thread] == written[thread]
        # deer-flow's thread: in seq order across its files, ids as the JSONL backend derives them.
        assert [r["content"] for r in imported["df"]] == ["first", {"content": "third"}, "fourth"]
        assert [r["event_id"] for r in imported["df"]] == [
            derived_event_id("df", "run-1", 1),
            derived_event_id("df", "run-2", 3),
            derived_event_id("df", "run-2", 4),
        ]
        assert imported["df"][0]["created_at"] == "2026-03-01T10:00:01+00:00"

        again = await cli(*args)
        assert again.exit_code == 2, again.output
        assert "imported 0 onto" in again.output
        assert "skipped 23: already in the read tables" in again.output
        await projected(kafka_bootstrap, bus_db, topic)
        assert await stored(bus_db, ["a", "b", "df"]) == imported

        strict = await cli(*args, "--strict")
        assert strict.exit_code == 1
        assert strict.output.splitlines()[-1].startswith("error: threads/df/runs/run-2.jsonl:2: not JSON")
        assert strict.output.splitlines()[-1].endswith("(--strict: stopped here)")


async def test_a_runevents_sqlite_database_is_imported_with_its_ids_and_order(
    kafka_bootstrap: str, bus_db: str, topic: str, make_projector: Callable[..., Projector], tmp_path: Path
):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    await upgrade_async(url)
    source = SqlRunEventStore(url)
    try:
        for thread in ("x", "y", "z"):
            await source.put_batch([event(thread, n, run_id=f"r{n % 2}") for n in range(30)])
        await source.put(thread_id="x", run_id="r9", event_type="run.start", category="trace", content="text")
        await source.delete_by_run("y", "r1")
    finally:
        await source.close()
    written = await stored(url, ["x", "y", "z"])

    async with running(make_projector()):
        result = await cli(
            "backfill", url, "--database", bus_db, "--kafka", kafka_bootstrap, "--topic", topic
        )
        assert result.exit_code == 0, result.output
        assert "imported 76 onto" in result.output
        await projected(kafka_bootstrap, bus_db, topic)
    imported = await stored(bus_db, ["x", "y", "z"])
    assert imported == written


DEERFLOW_DDL = """
CREATE SCHEMA deerflow;
CREATE TABLE deerflow.run_events (
    id SERIAL PRIMARY KEY,
    thread_id VARCHAR(64) NOT NULL,
    run_id VARCHAR(64) NOT NULL,
    user_id VARCHAR(64),
    event_type VARCHAR(32) NOT NULL,
    category VARCHAR(16) NOT NULL,
    content TEXT NOT NULL,
    event_metadata JSON NOT NULL,
    seq INTEGER NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    CONSTRAINT uq_events_thread_seq UNIQUE (thread_id, seq)
)
"""


async def test_deerflows_run_events_table_is_imported_with_content_decoded_as_deerflow_reads_it(
    kafka_bootstrap: str, bus_db: str, topic: str, make_projector: Callable[..., Projector]
):
    rows = [
        (
            "t1",
            "r1",
            "u1",
            "llm.human.input",
            "message",
            '{"type": "human", "content": "hi"}',
            '{"caller": "lead_agent", "content_is_json": true, "content_is_dict": true}',
            1,
        ),
        ("t1", "r1", "u1", "llm.ai.response", "message", "plain answer", '{"caller": "lead_agent"}', 2),
        ("t1", "r1", None, "run.end", "lifecycle", "", "{}", 3),
        ("t2", "r7", None, "run.start", "trace", '["a", 1]', '{"content_is_json": true}', 5),
        ("t2", "r7", None, "llm.error", "message", "{broken", '{"content_is_json": true}', 6),
    ]
    for statement in DEERFLOW_DDL.split(";"):
        await fetch(bus_db, statement)
    for thread, run, user, kind, category, content, metadata, seq in rows:
        await fetch(
            bus_db,
            "INSERT INTO deerflow.run_events (thread_id, run_id, user_id, event_type, category, content, "
            "event_metadata, seq, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7::json, $8, "
            "'2026-02-01T00:00:00Z'::timestamptz + $8::int * interval '1 second')",
            thread,
            run,
            user,
            kind,
            category,
            content,
            metadata,
            seq,
        )
    args = (
        "backfill",
        bus_db,
        "--source-schema",
        "deerflow",
        "--database",
        bus_db,
        "--kafka",
        kafka_bootstrap,
    )
    async with running(make_projector()):
        result = await cli(*args, "--topic", topic)
        assert result.exit_code == 2, result.output
        assert "imported 4 onto" in result.output
        assert "row id 5 (thread 't2' seq 6): content_is_json, but content is not JSON" in result.output
        await projected(kafka_bootstrap, bus_db, topic)
    imported = await stored(bus_db, ["t1", "t2"])
    assert [(r["content"], r["metadata"], r["user_id"]) for r in imported["t1"]] == [
        ({"type": "human", "content": "hi"}, {"caller": "lead_agent"}, "u1"),
        ("plain answer", {"caller": "lead_agent"}, "u1"),
        ("", {}, None),
    ]
    assert imported["t2"][0]["content"] == ["a", 1]
    assert imported["t2"][0]["created_at"] == "2026-02-01T00:00:05+00:00"
    assert imported["t2"][0]["event_id"] == derived_event_id("t2", "r7", 5)


async def test_a_killed_backfill_run_again_finishes_the_job_in_order_without_duplicates(
    kafka_bootstrap: str, bus_db: str, topic: str, make_projector: Callable[..., Projector], tmp_path: Path
):
    threads = [f"t{n}" for n in range(40)]
    per_thread = 1000
    for thread in threads:
        runs = tmp_path / "threads" / thread / "runs"
        runs.mkdir(parents=True)
        for run in range(4):
            lines = [
                deerflow_line(
                    thread, f"r{run}", seq, f"{thread} {seq}", created_at="2026-03-01T10:00:00+00:00"
                )
                for seq in range(run * per_thread // 4 + 1, (run + 1) * per_thread // 4 + 1)
            ]
            (runs / f"r{run}.jsonl").write_bytes(b"".join(lines))
    total = len(threads) * per_thread
    command = [sys.executable, "-m", "runevents.cli", "backfill", str(tmp_path), "--topic", topic]
    command += ["--database", bus_db, "--kafka", kafka_bootstrap, "--batch", "500"]

    async with running(make_projector()):
        first = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        try:
            published = 0
            while published < total // 4 and first.returncode is None:
                await asyncio.sleep(0.02)
                published = sum((await log_offsets(kafka_bootstrap, topic, "end")).values())
            if first.returncode is None:
                first.send_signal(signal.SIGKILL)  # mid-backfill, likely with a batch in flight
        finally:
            await asyncio.wait_for(first.wait(), timeout=30)
        assert published < total, "the backfill was not killed midway"

        second = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stdout + second.stderr
        assert f"read {total:,} of {total:,} records" in second.stdout
        assert "already in the read tables" in second.stdout
        await projected(kafka_bootstrap, bus_db, topic)

    counts = await fetch(bus_db, "SELECT count(*), count(DISTINCT event_id) FROM run_events")
    assert tuple(counts[0]) == (total, total)
    imported = await stored(bus_db, threads)
    for thread in threads:
        assert [r["content"] for r in imported[thread]] == [
            f"{thread} {seq}" for seq in range(1, per_thread + 1)
        ]


async def test_backfill_refuses_what_it_cannot_read_in_one_line(
    kafka_bootstrap: str, bus_db: str, topic: str, tmp_path: Path
):
    (tmp_path / "empty").mkdir()
    await upgrade_async(f"sqlite:///{tmp_path / 'other.db'}")
    nothing = f"sqlite:///{tmp_path / 'nothing.db'}"
    cases = [
        ([str(tmp_path / "missing")], "is neither a directory nor a database URL"),
        ([str(tmp_path / "empty")], "has no threads/ directory: not a runevents or deer-flow JSONL"),
        ([str(tmp_path), "--source-schema", "s"], "--source-schema is for a database source"),
        ([nothing], "has no run_events table: expected runevents' or deer-flow's run_events"),
        ([f"sqlite:///{tmp_path / 'other.db'}", "--topic", "nope"], "topic 'nope' does not exist"),
    ]
    for arguments, message in cases:
        result = await cli("backfill", *arguments, "--database", bus_db, "--kafka", kafka_bootstrap)
        assert result.exit_code == 1, (arguments, result.output)
        assert result.output.startswith("error: "), result.output
        assert message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output


DEERFLOW_SQLITE_DDL = """CREATE TABLE run_events (
    id INTEGER PRIMARY KEY, thread_id VARCHAR(64) NOT NULL, run_id VARCHAR(64) NOT NULL,
    user_id VARCHAR(64), event_type VARCHAR(32) NOT NULL, category VARCHAR(16) NOT NULL,
    content TEXT NOT NULL, event_metadata JSON NOT NULL, seq INTEGER NOT NULL,
    created_at DATETIME NOT NULL, CONSTRAINT uq_events_thread_seq UNIQUE (thread_id, seq))"""


async def test_direct_moves_deerflows_sqlite_table_into_runevents_tables_without_a_broker(
    tmp_path: Path,
) -> None:
    # deer-flow's single-node default: its SQLite database; the drop-in's db backend keeps runevents'
    # tables in runevents.db beside it. 2,500 rows: more than one batch, a thread across two.
    source = tmp_path / "deerflow.db"
    engine = engine_for(f"sqlite:///{source}")
    rows = [
        {
            "thread": f"t{n % 3}",
            "run": f"r{n % 5}",
            "user": "u1" if n % 2 else None,
            "content": orjson.dumps({"n": n}).decode() if n % 4 else f"text {n}",
            "metadata": '{"content_is_json": true, "content_is_dict": true}' if n % 4 else "{}",
            "seq": n + 1,
            "at": f"2026-03-01 00:{n // 60 % 60:02d}:{n % 60:02d}",
        }
        for n in range(2500)
    ]
    try:
        async with engine.begin() as connection:
            await connection.exec_driver_sql(DEERFLOW_SQLITE_DDL)
            await connection.execute(
                text(
                    "INSERT INTO run_events (thread_id, run_id, user_id, event_type, category, content, "
                    "event_metadata, seq, created_at) VALUES (:thread, :run, :user, 'llm.ai.response', "
                    "'message', :content, :metadata, :seq, :at)"
                ),
                rows,
            )
    finally:
        await engine.dispose()
    target = f"sqlite:///{tmp_path / 'runevents.db'}"
    await upgrade_async(target)
    args = ("backfill", f"sqlite:///{source}", "--database", target, "--direct", "--batch", "1000")
    first = await cli(*args)
    assert first.exit_code == 0, first.output
    assert "imported 2,500 into the read tables at sqlite:///" in first.output
    again = await cli(*args)
    assert again.exit_code == 0, again.output
    assert "imported 0 into" in again.output
    assert "skipped 2,500: already in the read tables" in again.output
    async with SqlRunEventStore(target) as store:
        t0 = await store.list_messages("t0", limit=1000)
        assert await store.count_messages("t1") == sum(1 for row in rows if row["thread"] == "t1")
    expected = [row for row in rows if row["thread"] == "t0"]
    assert [r["seq"] for r in t0] == list(range(1, len(expected) + 1))  # numbered 1..n in source order
    assert [r["content"] for r in t0[:2]] == ["text 0", {"n": 3}]
    assert [r["metadata"] for r in t0[:2]] == [{}, {}]  # deer-flow's markers are dropped
    assert t0[0]["event_id"] == derived_event_id("t0", "r0", 1)
    assert t0[1]["user_id"] == "u1"
