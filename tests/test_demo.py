"""The demo command and the simulated fleet behind it: what they print and what they leave on disk."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from runevents import cli
from runevents.cli import app
from runevents.events import Record
from runevents.fleet import FLUSH_EVERY, RECEIPT, run_fleet
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


def test_demo_prints_its_checks_and_leaves_deer_flow_files(tmp_path: Path) -> None:
    base = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--agents", "3", "--runs-per-agent", "2", "--dir", str(base)])

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
        app, ["demo", "--agents", "10", "--runs-per-agent", "1", "--dir", str(tmp_path)]
    )

    assert result.exit_code == 0, result.output
    assert "2 more threads" in result.output
    assert "all 4 checks passed" in result.output
    assert len(result.output.splitlines()) <= 60


def test_demo_exits_non_zero_when_a_check_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def lock_not_held(base: Path, thread: str) -> tuple[bool, str]:
        return False, "a second store on the open directory: NOT refused"

    monkeypatch.setattr(cli, "_check_second_store", lock_not_held)

    result = CliRunner().invoke(
        app, ["demo", "--agents", "2", "--runs-per-agent", "1", "--dir", str(tmp_path)]
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
