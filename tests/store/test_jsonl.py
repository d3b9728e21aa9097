"""What only the JSONL backend promises: its files, recovery from crashes, deer-flow's directories."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from runevents.errors import InvalidEventError, InvalidQueryError, StoreLockedError
from runevents.store import JsonlRunEventStore, jsonl_files, open_store


def event(thread_id: str = "t1", run_id: str = "r1", n: int = 0, **extra: Any) -> dict[str, Any]:
    """A message event with distinct content."""
    return {
        "thread_id": thread_id,
        "run_id": run_id,
        "event_type": "llm.human.input",
        "category": "message",
        "content": {"id": f"m-{thread_id}-{run_id}-{n}", "type": "human", "content": f"hello {n}"},
        **extra,
    }


def run_file(base: Path, thread_id: str, run_id: str) -> Path:
    """Where deer-flow's layout keeps a run."""
    return base / "threads" / thread_id / "runs" / f"{run_id}.jsonl"


def seqs_in(path: Path) -> list[int]:
    """The seq of every line of a run file."""
    return [orjson.loads(line)["seq"] for line in path.read_bytes().splitlines()]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("thread_id", "../x"),
        ("thread_id", "a/b"),
        ("thread_id", ".hidden"),
        ("thread_id", ".."),
        ("run_id", "../../etc/passwd"),
        ("run_id", "/abs"),
        ("run_id", "sp ace"),
    ],
)
async def test_unsafe_ids_are_rejected_and_nothing_is_created(tmp_path: Path, field: str, value: str) -> None:
    base = tmp_path / "store"
    async with JsonlRunEventStore(base) as store:
        with pytest.raises(InvalidEventError) as caught:
            await store.put_batch([event(), {**event(), field: value}])
        assert caught.value.field == field
        assert caught.value.index == 1
        assert "safe file name" in str(caught.value)
        assert await store.count_messages("t1") == 0
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [".runevents.lock"]


@pytest.mark.parametrize("thread_id", ["../x", "a/b", ".."])
async def test_reads_and_deletes_with_unsafe_ids_raise(tmp_path: Path, thread_id: str) -> None:
    async with JsonlRunEventStore(tmp_path) as store:
        with pytest.raises(InvalidQueryError, match="thread_id"):
            await store.list_messages(thread_id)
        with pytest.raises(InvalidQueryError, match="thread_id"):
            await store.delete_by_thread(thread_id)
        with pytest.raises(InvalidQueryError, match="run_id"):
            await store.delete_by_run("t1", thread_id)


async def test_a_batch_writes_each_event_to_its_own_runs_file(tmp_path: Path) -> None:
    async with JsonlRunEventStore(tmp_path) as store:
        await store.put_batch(
            [event("t1", "a", 0), event("t1", "b", 1), event("t2", "a", 2), event("t1", "a", 3)]
        )
    assert seqs_in(run_file(tmp_path, "t1", "a")) == [1, 3]
    assert seqs_in(run_file(tmp_path, "t1", "b")) == [2]
    assert seqs_in(run_file(tmp_path, "t2", "a")) == [1]


async def test_lines_are_deer_flow_records_plus_event_id_and_user_id(tmp_path: Path) -> None:
    async with JsonlRunEventStore(tmp_path) as store:
        record = await store.put(**event(), metadata={"caller": "agent"}, user_id="u1")
    (line,) = run_file(tmp_path, "t1", "r1").read_text(encoding="utf-8").splitlines()
    assert json.loads(line) == record


async def test_reopening_restores_seq_and_counts_of_every_thread(tmp_path: Path) -> None:
    async with JsonlRunEventStore(tmp_path) as store:
        for thread in ("t1", "t2", "t3"):
            await store.put_batch([event(thread, f"r{i % 2}", i) for i in range(5)])
        await store.put(thread_id="t1", run_id="r0", event_type="run.start", category="trace", content="x")
    async with JsonlRunEventStore(tmp_path) as store:
        assert [await store.count_messages(t) for t in ("t1", "t2", "t3")] == [5, 5, 5]
        assert (await store.put(**event("t1", "r9")))["seq"] == 7
        assert (await store.put(**event("t3", "r9")))["seq"] == 6


async def test_a_seq_is_never_reused_after_the_newest_run_is_deleted_and_the_store_reopened(
    tmp_path: Path,
) -> None:
    async with JsonlRunEventStore(tmp_path) as store:
        await store.put_batch([event("t1", "old", i) for i in range(3)])
        await store.put_batch([event("t1", "newest", i) for i in range(2)])
        assert await store.delete_by_run("t1", "newest") == 2
    assert (tmp_path / "threads" / "t1" / "runs" / ".seq").read_text() == "5\n"
    async with JsonlRunEventStore(tmp_path) as store:
        assert (await store.put(**event("t1", "next")))["seq"] == 6


async def test_delete_by_thread_resets_seq_across_reopen_and_keeps_the_threads_other_files(
    tmp_path: Path,
) -> None:
    keep = tmp_path / "threads" / "t1" / "user-data" / "notes.txt"
    keep.parent.mkdir(parents=True)
    keep.write_text("deer-flow keeps a thread's workspace here")
    async with JsonlRunEventStore(tmp_path) as store:
        await store.put_batch([event("t1", "a", i) for i in range(4)])
        await store.delete_by_run("t1", "a")
        await store.put(**event("t1", "b"))
        assert await store.delete_by_thread("t1") == 1
    assert not (tmp_path / "threads" / "t1" / "runs").exists()
    assert keep.read_text() == "deer-flow keeps a thread's workspace here"
    async with JsonlRunEventStore(tmp_path) as store:
        assert (await store.put(**event("t1", "c")))["seq"] == 1


async def test_a_torn_last_line_is_dropped_reported_once_and_repaired(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with JsonlRunEventStore(tmp_path) as store:
        await store.put_batch([event(n=i) for i in range(3)])
    path = run_file(tmp_path, "t1", "r1")
    intact = path.read_bytes()
    with open(path, "ab") as file:
        file.write(b'{"thread_id":"t1","run_id":"r1","seq":4,"event_type":"llm.hu')
    caplog.set_level(logging.WARNING, logger="runevents.store.jsonl")
    async with JsonlRunEventStore(tmp_path) as store:
        assert [r["seq"] for r in await store.list_messages("t1")] == [1, 2, 3]
        assert [r["seq"] for r in await store.list_messages("t1")] == [1, 2, 3]
        assert (await store.put(**event(n=9)))["seq"] == 4
    torn = [r for r in caplog.records if "torn last line" in r.getMessage()]
    assert len(torn) == 1
    assert path.read_bytes().startswith(intact)
    assert seqs_in(path) == [1, 2, 3, 4]
    caplog.clear()
    async with JsonlRunEventStore(tmp_path) as store:
        assert await store.count_messages("t1") == 4
    assert not [r for r in caplog.records if "torn" in r.getMessage()]


async def test_an_unreadable_line_in_the_middle_is_skipped_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with JsonlRunEventStore(tmp_path) as store:
        await store.put_batch([event(n=i) for i in range(2)])
    path = run_file(tmp_path, "t1", "r1")
    first, second = path.read_bytes().splitlines()
    path.write_bytes(first + b"\n{not json\n" + second + b"\n")
    caplog.set_level(logging.WARNING, logger="runevents.store.jsonl")
    async with JsonlRunEventStore(tmp_path) as store:
        assert [r["seq"] for r in await store.list_messages("t1")] == [1, 2]
    assert any(f"{path}:2: skipped an unreadable record" in r.getMessage() for r in caplog.records)


async def test_a_second_store_on_the_same_directory_is_refused_until_the_first_closes(tmp_path: Path) -> None:
    first = JsonlRunEventStore(tmp_path)
    await first.put(**event())
    second = JsonlRunEventStore(tmp_path)
    with pytest.raises(StoreLockedError, match="another store has this directory open"):
        await second.list_messages("t1")
    await first.close()
    assert len(await second.list_messages("t1")) == 1
    await second.close()


async def test_threads_dropped_from_the_cache_are_read_back_from_their_files(tmp_path: Path) -> None:
    async with JsonlRunEventStore(tmp_path, max_cached_threads=2) as store:
        for round_ in range(3):
            for thread in ("t1", "t2", "t3", "t4", "t5"):
                await store.put(**event(thread, "r", round_))
        for thread in ("t1", "t2", "t3", "t4", "t5"):
            assert [r["seq"] for r in await store.list_messages(thread)] == [1, 2, 3]
            assert (await store.put(**event(thread, "r", 9)))["seq"] == 4


async def test_a_failed_append_leaves_files_and_store_as_they_were(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with JsonlRunEventStore(tmp_path) as store:
        await store.put(**event("t1", "a"))
        before = run_file(tmp_path, "t1", "a").read_bytes()
        real_write = os.write
        calls = 0

        def write_then_fail(fd: int, data: Any) -> int:
            nonlocal calls
            calls += 1
            if calls == 2:
                raise OSError(28, "No space left on device")
            return real_write(fd, data)

        monkeypatch.setattr(os, "write", write_then_fail)
        with pytest.raises(OSError, match="No space left"):
            await store.put_batch([event("t1", "a", 1), event("t1", "b", 2)])
        monkeypatch.undo()
        assert run_file(tmp_path, "t1", "a").read_bytes() == before
        assert run_file(tmp_path, "t1", "b").read_bytes() == b""
        assert [r["seq"] for r in await store.list_events("t1", "a")] == [1]
        assert (await store.put(**event("t1", "b")))["seq"] == 2
    async with JsonlRunEventStore(tmp_path) as store:
        assert [r["seq"] for r in await store.list_messages("t1")] == [1, 2]


async def test_a_put_cancelled_during_its_append_holds_the_lock_until_the_append_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_append = jsonl_files.append_lines
    started = asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow_append(appends: Any, fsync: bool) -> None:
        loop.call_soon_threadsafe(started.set)
        import time

        time.sleep(0.3)
        real_append(appends, fsync)

    monkeypatch.setattr(jsonl_files, "append_lines", slow_append)
    async with JsonlRunEventStore(tmp_path) as store:
        cancelled = asyncio.create_task(store.put(**event(n=1)))
        await started.wait()
        follower = asyncio.create_task(store.put(**event(n=2)))
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        # The cancelled put's append had finished before its lock was released, and it was recorded.
        assert seqs_in(run_file(tmp_path, "t1", "r1")) == [1]
        assert (await follower)["seq"] == 2
        assert [r["seq"] for r in await store.list_messages("t1")] == [1, 2]
    assert seqs_in(run_file(tmp_path, "t1", "r1")) == [1, 2]


async def test_fsync_durability_syncs_every_append(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    async with JsonlRunEventStore(tmp_path, durability="flush") as store:
        await store.put(**event())
    assert synced == []
    async with JsonlRunEventStore(tmp_path, durability="fsync") as store:
        await store.put(**event(n=1))
        await store.put(**event(n=2))
    assert len(synced) >= 2


def deer_flow_line(**fields: Any) -> str:
    """One line as deer-flow's JSONL store writes it."""
    return json.dumps(fields, default=str, ensure_ascii=False) + "\n"


async def test_a_deer_flow_directory_opens_as_it_is(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    base = tmp_path / ".deer-flow"
    common = {"thread_id": "thread-1", "metadata": {"caller": "agent"}}
    first = run_file(base, "thread-1", "run-a")
    first.parent.mkdir(parents=True)
    first.write_text(
        deer_flow_line(
            **common,
            run_id="run-a",
            event_type="llm.human.input",
            category="message",
            content={"id": "h1", "type": "human", "content": "héllo \u2028 😀"},
            seq=1,
            created_at="2026-08-01T10:00:00+00:00",
        )
        # deer-flow once wrote a whole batch into its first event's run file: a record of run-b here.
        + deer_flow_line(
            **common,
            run_id="run-b",
            event_type="llm.ai.response",
            category="message",
            content={"id": "a1", "type": "ai", "content": "hi"},
            seq=2,
            created_at="2026-08-01T10:00:01",
        ),
        encoding="utf-8",
    )
    run_file(base, "thread-1", "run-b").write_text(
        deer_flow_line(
            **common,
            run_id="run-b",
            event_type="run.end",
            category="lifecycle",
            content="",
            seq=3,
            created_at="2026-08-01T10:00:02+02:00",
        ),
        encoding="utf-8",
    )
    async with JsonlRunEventStore(base) as store:
        messages = await store.list_messages("thread-1")
        assert [(m["seq"], m["run_id"], m["content"]["id"]) for m in messages] == [
            (1, "run-a", "h1"),
            (2, "run-b", "a1"),
        ]
        assert messages[0]["content"]["content"] == "héllo \u2028 😀"
        assert messages[0]["user_id"] is None
        # A naive deer-flow timestamp is read as UTC; an offset is kept as the same instant.
        assert messages[1]["created_at"] == "2026-08-01T10:00:01+00:00"
        events_b = await store.list_events("thread-1", "run-b")
        assert [e["seq"] for e in events_b] == [2, 3]
        assert events_b[1]["created_at"] == "2026-08-01T08:00:02+00:00"
        ids = [m["event_id"] for m in messages]
        assert await store.get_message_seqs("thread-1", ["h1", "a1"]) == {"h1": 1, "a1": 2}
        assert (await store.put(**event("thread-1", "run-c")))["seq"] == 4
    async with JsonlRunEventStore(base) as store:
        assert [m["event_id"] for m in (await store.list_messages("thread-1"))[:2]] == ids
        assert len(set(ids)) == 2
        # Deleting run-b removes its record from run-a's file too: deletes never come back.
        assert await store.delete_by_run("thread-1", "run-b") == 2
    async with JsonlRunEventStore(base) as store:
        assert [m["content"]["id"] for m in await store.list_messages("thread-1")] == [
            "h1",
            "m-thread-1-run-c-0",
        ]
        assert (await store.put(**event("thread-1", "run-d")))["seq"] == 5


async def test_repeated_seqs_from_deer_flow_are_kept_in_file_order_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for run_id in ("run-a", "run-b"):
        path = run_file(tmp_path, "t", run_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            deer_flow_line(
                thread_id="t",
                run_id=run_id,
                event_type="llm.human.input",
                category="message",
                content=run_id,
                metadata={},
                seq=1,
                created_at="2026-08-01T10:00:00+00:00",
            ),
            encoding="utf-8",
        )
    caplog.set_level(logging.WARNING, logger="runevents.store.jsonl")
    async with JsonlRunEventStore(tmp_path) as store:
        assert [m["content"] for m in await store.list_messages("t")] == ["run-a", "run-b"]
        assert (await store.put(**event("t", "run-c")))["seq"] == 2
    assert any("share a seq" in r.getMessage() for r in caplog.records)


def test_open_store_reads_backend_urls(tmp_path: Path) -> None:
    store = open_store(f"jsonl://{tmp_path}?durability=fsync&max_trace_content=100")
    assert isinstance(store, JsonlRunEventStore)
    assert store.base_dir == tmp_path
    with pytest.raises(ValueError, match="unknown backend 'mongo'"):
        open_store("mongo://x")
    with pytest.raises(ValueError, match="unknown option"):
        open_store(f"jsonl://{tmp_path}?colour=red")
    with pytest.raises(ValueError, match="durability must be"):
        open_store(f"jsonl://{tmp_path}?durability=sometimes")
